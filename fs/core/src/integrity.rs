//! The integrity rules that decide what a stored block may be, in one place for reads, for the
//! resolution of previous versions at mount and for fsck.
//!
//! A block entry names the version the block holds now and, while that version is not yet
//! known durable, what the block may still hold after a crash: its previous version, or a hole
//! (docs/crypto.md, "Writeback and the replay window"). [`held_version`] is the one function
//! that says which of these a stored block is; nothing else is ever accepted.

use crate::format::records::{BlockEntry, BlockVersion};
use crate::Result;

/// Which version of its entry a stored block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The current version.
    Cur,
    /// The previous version, which the entry still accepts.
    Prev,
    /// The entry's previous state was a hole and the block reads as zeros.
    Hole,
    /// None of the versions the entry accepts: the block was changed or damaged.
    Neither,
}

/// Which version of `entry` the stored `block` (the bytes storage holds for it; shorter than a
/// block, or empty, where the object ends early) holds. `verifies(v)` says whether the block
/// verifies against version `v`: its tag under the keys of `v`'s generation, over a whole
/// block. The current version wins; the previous one counts only while the entry keeps it.
pub fn held_version(
    entry: &BlockEntry,
    block: &[u8],
    mut verifies: impl FnMut(&BlockVersion) -> Result<bool>,
) -> Result<Held> {
    if verifies(&entry.cur)? {
        return Ok(Held::Cur);
    }
    Ok(match &entry.prev {
        Some(Some(prev)) if verifies(prev)? => Held::Prev,
        Some(None) if block.iter().all(|b| *b == 0) => Held::Hole,
        _ => Held::Neither,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(generation: u64) -> BlockVersion {
        BlockVersion {
            generation,
            tag: [generation as u8; 16],
        }
    }

    /// Verifies exactly the versions of the generations in `good`.
    fn only(good: &[u64]) -> impl FnMut(&BlockVersion) -> Result<bool> + '_ {
        move |v| Ok(good.contains(&v.generation))
    }

    #[test]
    fn current_version_wins() {
        let e = BlockEntry {
            cur: version(2),
            prev: Some(Some(version(1))),
        };
        assert_eq!(held_version(&e, &[1; 8], only(&[1, 2])).unwrap(), Held::Cur);
    }

    #[test]
    fn previous_version_only_while_the_entry_keeps_it() {
        let kept = BlockEntry {
            cur: version(2),
            prev: Some(Some(version(1))),
        };
        assert_eq!(
            held_version(&kept, &[1; 8], only(&[1])).unwrap(),
            Held::Prev
        );
        let cleared = BlockEntry {
            cur: version(2),
            prev: None,
        };
        assert_eq!(
            held_version(&cleared, &[1; 8], only(&[1])).unwrap(),
            Held::Neither
        );
    }

    #[test]
    fn zeros_are_a_hole_only_where_the_previous_state_was_one() {
        let was_hole = BlockEntry {
            cur: version(2),
            prev: Some(None),
        };
        assert_eq!(
            held_version(&was_hole, &[0; 8], only(&[])).unwrap(),
            Held::Hole
        );
        assert_eq!(held_version(&was_hole, &[], only(&[])).unwrap(), Held::Hole);
        assert_eq!(
            held_version(&was_hole, &[0, 0, 1], only(&[])).unwrap(),
            Held::Neither
        );
        let no_prev = BlockEntry {
            cur: version(2),
            prev: None,
        };
        assert_eq!(
            held_version(&no_prev, &[0; 8], only(&[])).unwrap(),
            Held::Neither
        );
    }
}
