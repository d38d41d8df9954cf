//! The `--json` report, written by hand (a flat, stable shape; no serialization framework).

use digimedfs_core::check::{Fixability, Report};

/// A JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "null".into(), |v| v.to_string())
}

fn opt_str(v: Option<&str>) -> String {
    v.map_or_else(|| "null".into(), string)
}

/// The report as one JSON object.
pub fn report(backing: &str, r: &Report, exit: u8) -> String {
    let problems: Vec<String> = r
        .problems
        .iter()
        .map(|p| {
            let fixability = match p.fixability {
                Fixability::None => "none",
                Fixability::Safe => "safe",
                Fixability::Unsafe => "unsafe",
            };
            let blocks: Vec<String> = p.blocks.iter().map(|b| b.to_string()).collect();
            format!(
                "{{\"kind\":{},\"inode\":{},\"path\":{},\"detail\":{},\"blocks\":[{}],\"fixability\":{},\"action\":{},\"fixed\":{}}}",
                string(p.kind.as_str()),
                opt_u64(p.ino),
                opt_str(p.path.as_deref()),
                string(&p.detail),
                blocks.join(","),
                string(fixability),
                string(&p.action),
                p.fixed
            )
        })
        .collect();
    format!(
        "{{\"backing_dir\":{},\"exit_code\":{exit},\"mounted\":{},\"was_clean\":{},\"modified\":{},\"cancelled\":{},\
         \"files\":{},\"directories\":{},\"symlinks\":{},\"special\":{},\"bytes\":{},\"objects\":{},\"records\":{},\
         \"blocks_verified\":{},\"previous_versions\":{},\"problems_found\":{},\"problems_fixed\":{},\"problems_uncorrected\":{},\"problems\":[{}]}}",
        string(backing),
        r.mounted,
        r.was_clean,
        r.modified,
        r.cancelled,
        r.files,
        r.directories,
        r.symlinks,
        r.special,
        r.bytes,
        r.objects,
        r.records,
        r.blocks_verified,
        r.previous_versions,
        r.problems.len(),
        r.fixed(),
        r.uncorrected(),
        problems.join(",")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes() {
        assert_eq!(super::string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
