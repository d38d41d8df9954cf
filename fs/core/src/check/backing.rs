//! Pass 6: the backing directory holds nothing but the names digimedfs creates. Stale
//! temporary files are removable; anything else is reported and left alone, and no link is
//! ever followed.

use super::{Checker, Fixability, ProblemKind};
use crate::backing::{BackingDir, LOCK_FILE, META_DIR, OBJECTS_DIR, SUPERBLOCK, SUPERBLOCK_BAK};
use crate::confined::{Confined, Kind};
use std::path::PathBuf;

impl Checker<'_> {
    pub(super) fn pass_backing(&mut self, dir: &BackingDir) {
        let root = dir.confined().clone();
        let Some(names) = sorted_entries(&root, None) else {
            return;
        };
        for (name, kind) in names {
            let is_dir = kind == Kind::Dir;
            let expected_dir =
                name == META_DIR || name == OBJECTS_DIR || name == crate::backing::BACKUP_DIR;
            let expected_file = name == SUPERBLOCK || name == SUPERBLOCK_BAK || name == LOCK_FILE;
            if (expected_dir && is_dir) || (expected_file && kind == Kind::File) {
                continue;
            }
            self.unknown_file(
                &name,
                kind,
                kind == Kind::File && (name == "superblock.tmp" || name == "superblock.bak.tmp"),
            );
        }
        let Some(subs) = sorted_entries(&root, Some(OBJECTS_DIR)) else {
            return;
        };
        for (sub, kind) in subs {
            let path = format!("{OBJECTS_DIR}/{sub}");
            let fanout = sub.len() == 2
                && sub
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            if !fanout || kind != Kind::Dir {
                self.unknown_file(&path, kind, kind == Kind::File && sub.ends_with(".tmp"));
                continue;
            }
            let Some(files) = sorted_entries(&root, Some(&path)) else {
                continue;
            };
            for (f, fkind) in files {
                let fpath = format!("{path}/{f}");
                let is_object_name = |n: &str| {
                    n.len() == 32
                        && n.starts_with(sub.as_str())
                        && n.bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                };
                if fkind == Kind::Dir
                    && f.strip_suffix(crate::objects::SEGMENT_DIR_SUFFIX)
                        .is_some_and(is_object_name)
                {
                    self.check_segment_dir(&root, &fpath);
                    continue;
                }
                let ok = fkind == Kind::File && is_object_name(&f);
                if !ok {
                    // `.cow`: a copy-on-write copy interrupted by a crash (format.md).
                    let leftover = f.ends_with(".tmp") || f.ends_with(".cow");
                    self.unknown_file(&fpath, fkind, fkind == Kind::File && leftover);
                }
            }
        }
    }

    /// The segment files of one object (`objects/XX/<id>.seg/<k>`, format.md).
    fn check_segment_dir(&mut self, root: &Confined, dir: &str) {
        let Some(files) = sorted_entries(root, Some(dir)) else {
            return;
        };
        for (f, kind) in files {
            if kind == Kind::File && crate::objects::parse_segment_name(&f).is_some() {
                continue;
            }
            let leftover = f.ends_with(".tmp") || f.ends_with(".cow");
            self.unknown_file(&format!("{dir}/{f}"), kind, kind == Kind::File && leftover);
        }
    }

    /// Reports `rel` (relative to the backing directory), which digimedfs did not create.
    fn unknown_file(&mut self, rel: &str, kind: Kind, tmp: bool) {
        let path = self
            .root
            .as_ref()
            .map_or_else(|| PathBuf::from(rel), |r| r.display(rel));
        if tmp {
            let fix = self.problem(
                ProblemKind::StaleTemp,
                None,
                format!(
                    "{}: temporary file left by an interrupted write",
                    path.display()
                ),
                Fixability::Safe,
                "delete it",
            );
            if fix {
                self.plan.remove_files.push(rel.to_string());
            }
        } else if kind == Kind::Symlink {
            self.problem(
                ProblemKind::UnknownFile,
                None,
                format!(
                    "{}: a symbolic link; digimedfs never creates one and never follows one \
                     (someone with access to the storage put it there)",
                    path.display()
                ),
                Fixability::None,
                "left alone: find out who created it, then remove it by hand (rm on the link \
                 itself)",
            );
        } else {
            self.problem(
                ProblemKind::UnknownFile,
                None,
                format!(
                    "{}: {} that is not part of a digimedfs backing directory",
                    path.display(),
                    match kind {
                        Kind::Dir => "a directory",
                        Kind::File => "a file",
                        _ => "a special file",
                    }
                ),
                Fixability::None,
                "left alone (not created by digimedfs; remove it by hand if it is not needed)",
            );
        }
    }
}

/// The entries of `rel` beneath `root` (`root` itself for `None`) as (name, kind), sorted by
/// name, never following a link; `None` if it cannot be listed.
fn sorted_entries(root: &Confined, rel: Option<&str>) -> Option<Vec<(String, Kind)>> {
    let entries = match rel {
        None => root.list().ok()?,
        Some(rel) => root.list_dir(rel).ok()??,
    };
    let mut out: Vec<(String, Kind)> = entries
        .into_iter()
        .map(|e| (e.name.to_string_lossy().into_owned(), e.kind))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Some(out)
}
