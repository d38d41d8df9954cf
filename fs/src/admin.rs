//! How `digimedfs info` and `digimedfs tune` present what the core's admin toolbox
//! (`digimedfs_core::admin`) finds: aligned `Field:   value` lines like `dumpe2fs -h`, or one
//! JSON object with stable snake_case field names for scripts.
//!
//! Text read from the backing directory (label, tenant, backup point id, and what error messages
//! quote of it) is not authenticated without a key and comes from storage, which may be
//! hostile: its control characters are escaped in both forms (`\u{1b}` in text, `\u001b` in
//! JSON, which would otherwise pass DEL and the C1 controls through raw), so it cannot move the
//! cursor or rewrite the terminal it is printed on. Key slots show index, kind and key id only,
//! never the wrapped key.

use digimedfs_core::admin::{flag_names, BackupInfo, CopyState, Info, TuneReport, Verification};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Width of the field names in the text form (the longest, plus room).
const FIELD_WIDTH: usize = 26;

/// `s` with its control characters (newline, escape, C1 controls, ...) escaped as `\u{..}`.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch (proleptic Gregorian calendar).
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn cipher_suite_name(suite: u16) -> &'static str {
    match suite {
        1 => "AES-256-XTS data, POLYVAL/AES block tags, BLAKE3 MACs, AES-256-GCM-SIV records",
        _ => "unknown",
    }
}

fn flags_text(flags: u32) -> String {
    let mut names: Vec<String> = flag_names(flags).iter().map(|s| s.to_string()).collect();
    let known = digimedfs_core::format::superblock::FLAG_CLEAN
        | digimedfs_core::format::superblock::FLAG_STORE_STATE;
    if flags & !known != 0 {
        names.push(format!("unknown bits {:#x}", flags & !known));
    }
    if flags & digimedfs_core::format::superblock::FLAG_CLEAN == 0 {
        names.insert(0, "not clean (mounted, or not unmounted cleanly)".into());
    }
    format!("{} ({flags:#010x})", names.join(", "))
}

fn copy_word(c: &CopyState) -> &'static str {
    match c {
        CopyState::Identical => "identical",
        CopyState::Differs => "differs",
        CopyState::Missing => "missing",
        CopyState::Unreadable(_) => "unreadable",
    }
}

/// The text form: one `Field:   value` line per fact.
pub fn info_text(info: &Info) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| lines.push((k.to_string(), v));
    add("Backing directory", info.backing.display().to_string());
    add(
        "Superblock",
        match &info.verification {
            Verification::Unverified => "unverified: read without a key".to_string(),
            Verification::Verified { slot, key } => {
                format!("verified: MAC matches (key slot {slot} opened with {key})")
            }
            Verification::Failed(why) => format!("NOT verified: {}", printable(why)),
        },
    );
    match &info.primary_error {
        None => add("Read from", info.source.to_string()),
        Some(why) => add(
            "Read from",
            format!(
                "{} (the primary is unusable: {})",
                info.source,
                printable(why)
            ),
        ),
    }
    add(
        "Other superblock copy",
        match &info.other_copy {
            CopyState::Unreadable(why) => format!("unreadable: {}", printable(why)),
            other => copy_word(other).to_string(),
        },
    );
    add("Filesystem UUID", info.fs_uuid.clone());
    add(
        "Filesystem label",
        if info.label.is_empty() {
            "<none>".to_string()
        } else {
            printable(&info.label)
        },
    );
    add("Tenant", printable(&info.tenant));
    add("Format version", info.format_version.to_string());
    add("Block size", info.block_size.to_string());
    add(
        "Cipher suite",
        format!(
            "{} ({})",
            info.cipher_suite,
            cipher_suite_name(info.cipher_suite)
        ),
    );
    add(
        "Created",
        format!("{} (unix time {})", utc(info.created), info.created),
    );
    add("Epoch", info.epoch.to_string());
    add("Flags", flags_text(info.flags));
    for slot in &info.slots {
        let mut v = slot.kind_name().to_string();
        if slot.kind_name() == "unknown" {
            let _ = write!(v, " kind {}", slot.kind);
        }
        match slot.key_version {
            Some(version) => {
                let _ = write!(v, ", key version {version}");
            }
            None if !slot.key_id.is_empty() => {
                let _ = write!(v, ", key id {}", slot.key_id);
            }
            None => {}
        }
        add(&format!("Key slot {}", slot.index), v);
    }
    add(
        "Mounted",
        match (&info.lock.held, &info.lock.holder) {
            (Ok(true), Some(h)) => format!("yes: lock held by {h}"),
            (Ok(true), None) => "yes: lock held (the lock file names no holder)".to_string(),
            (Ok(false), Some(h)) => format!("no (last holder: {h})"),
            (Ok(false), None) if !info.lock.file => "no (no lock file: never mounted)".into(),
            (Ok(false), None) => "no".to_string(),
            (Err(why), _) => format!("unknown: probing the lock failed: {}", printable(why)),
        },
    );
    if !info.mount_points.is_empty() {
        let points: Vec<String> = info
            .mount_points
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        add("Mount points (this host)", points.join(", "));
    }
    add(
        "Backup point",
        match &info.backup {
            BackupInfo::None => "none".to_string(),
            BackupInfo::Point {
                point,
                taken,
                epoch,
                files,
                same_fs,
            } => format!(
                "{} taken {} (unix time {taken}) at epoch {epoch}, {files} files{}",
                printable(point),
                utc(i64::try_from(*taken).unwrap_or(i64::MAX)),
                if *same_fs {
                    ""
                } else {
                    "; its manifest names another filesystem"
                }
            ),
            BackupInfo::Unreadable(why) => format!("present, unreadable: {}", printable(why)),
        },
    );
    let mut out = String::new();
    for (k, v) in lines {
        let _ = writeln!(out, "{:<FIELD_WIDTH$}{v}", format!("{k}:"));
    }
    out
}

/// The JSON form: one object on one line (docs/operations.md, "Inspecting and relabelling a
/// filesystem"), every control character escaped.
pub fn info_json(info: &Info) -> String {
    escape_controls(&info_value(info).to_string())
}

/// Serialized JSON with the control characters serde_json leaves raw (DEL, C1) escaped as
/// `\u00XX`. They can only occur inside strings (the structure is ASCII), where the escape
/// means the same character.
fn escape_controls(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

fn info_value(info: &Info) -> Value {
    let (verified_slot, verify_error) = match &info.verification {
        Verification::Unverified => (None, None),
        Verification::Verified { slot, .. } => (Some(*slot), None),
        Verification::Failed(why) => (None, Some(why.clone())),
    };
    let slots: Vec<Value> = info
        .slots
        .iter()
        .map(|s| {
            json!({
                "index": s.index,
                "kind": s.kind,
                "kind_name": s.kind_name(),
                "key_id": s.key_id,
                "key_version": s.key_version,
            })
        })
        .collect();
    let backup = match &info.backup {
        BackupInfo::None => json!({ "present": false }),
        BackupInfo::Point {
            point,
            taken,
            epoch,
            files,
            same_fs,
        } => json!({
            "present": true,
            "point": point,
            "taken": taken,
            "epoch": epoch,
            "files": files,
            "same_fs": same_fs,
        }),
        BackupInfo::Unreadable(why) => json!({ "present": true, "error": why }),
    };
    json!({
        "backing": info.backing.to_string_lossy(),
        "verified": info.verification.verified(),
        "verified_slot": verified_slot,
        "verify_error": verify_error,
        "source": info.source,
        "primary_error": info.primary_error,
        "other_copy": copy_word(&info.other_copy),
        "other_copy_error": match &info.other_copy {
            CopyState::Unreadable(why) => Some(why.clone()),
            _ => None,
        },
        "fs_uuid": info.fs_uuid,
        "label": info.label,
        "tenant": info.tenant,
        "format_version": info.format_version,
        "block_size": info.block_size,
        "cipher_suite": info.cipher_suite,
        "created": info.created,
        "epoch": info.epoch,
        "flags": {
            "raw": info.flags,
            "clean": info.flags & digimedfs_core::format::superblock::FLAG_CLEAN != 0,
            "store_state": info.flags & digimedfs_core::format::superblock::FLAG_STORE_STATE != 0,
        },
        "key_slots": slots,
        "mount": {
            "mounted": info.lock.held.as_ref().ok(),
            "lock_error": info.lock.held.as_ref().err(),
            "lock_file": info.lock.file,
            "holder": info.lock.holder,
            "mount_points": info
                .mount_points
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        },
        "backup_point": backup,
    })
}

/// The line `digimedfs tune` prints.
pub fn tune_text(report: &TuneReport) -> String {
    if report.changed {
        format!(
            "filesystem {}: label changed from {} to {}",
            report.fs_uuid,
            quoted(&report.old_label),
            quoted(&report.new_label)
        )
    } else {
        format!(
            "filesystem {}: label is already {}; nothing to do",
            report.fs_uuid,
            quoted(&report.new_label)
        )
    }
}

fn quoted(label: &str) -> String {
    format!("\"{}\"", printable(label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(-1), "1969-12-31 23:59:59 UTC");
        // Whatever a damaged superblock holds formats without overflow.
        assert!(utc(i64::MAX).ends_with(" UTC"));
        assert!(utc(i64::MIN).ends_with(" UTC"));
    }

    #[test]
    fn json_escapes_every_control_character_and_still_means_the_same() {
        let nasty = "a\u{1b}[2J\u{7f}\u{9b}31m\nb";
        let text = escape_controls(&json!({ "label": nasty }).to_string());
        assert!(text.chars().all(|c| !c.is_control()), "{text:?}");
        let back: Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back["label"], nasty);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("cohort-a"), "cohort-a");
        assert_eq!(printable("é ü"), "é ü");
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\u{a}");
        assert_eq!(printable("\u{9b}"), "\\u{9b}");
    }
}
