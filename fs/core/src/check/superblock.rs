//! Pass 1: both superblock copies decode, unlock and pass their MAC, and agree. A damaged or
//! differing copy is repaired by rewriting it from the other (planned, applied at the end).

use super::{Checker, Fixability, ProblemKind};
use crate::backing::{BackingDir, SUPERBLOCK, SUPERBLOCK_BAK};
use crate::crypto::FsKeys;
use crate::format::superblock::Superblock;

impl Checker<'_> {
    pub(super) fn pass_superblock(&mut self, dir: &BackingDir, keys: &FsKeys) {
        let mut valid: Vec<Option<Vec<u8>>> = Vec::new();
        for name in [SUPERBLOCK, SUPERBLOCK_BAK] {
            let status = dir.read_superblock(name).and_then(|bytes| {
                Superblock::decode_unverified(&bytes)?;
                Superblock::verify(&bytes, &keys.superblock)?;
                Ok(bytes)
            });
            match status {
                Ok(b) => valid.push(Some(b)),
                Err(e) => {
                    let other = if name == SUPERBLOCK {
                        "backup copy"
                    } else {
                        "primary"
                    };
                    let fix = self.problem(
                        ProblemKind::SuperblockDamaged,
                        None,
                        format!("{name}: {e}"),
                        Fixability::Safe,
                        &format!("rewrite {name} from the {other}"),
                    );
                    self.plan.rewrite_superblock |= fix;
                    valid.push(None);
                }
            }
        }
        if let [Some(a), Some(b)] = valid.as_slice() {
            if a != b {
                let fix = self.problem(
                    ProblemKind::SuperblockMismatch,
                    None,
                    "superblock and superblock.bak are both valid but differ (interrupted update)"
                        .into(),
                    Fixability::Safe,
                    "rewrite superblock.bak from the primary",
                );
                self.plan.rewrite_superblock |= fix;
            }
        }
    }
}
