//! `digimedfs-mangen DIR`: writes the man pages and shell completions of the digimedfs
//! commands under DIR (see the library). Used by scripts/install.sh and the Debian package.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!(
            "usage: digimedfs-mangen DIR   (writes DIR/man/man{{1,8}}/* and DIR/completions/*)"
        );
        return ExitCode::from(2);
    };
    match digimedfs_mangen::generate(std::path::Path::new(&dir)) {
        Ok(done) => {
            println!(
                "{} man pages and {} completion files in {}",
                done.man_pages.len(),
                done.completions.len(),
                std::path::Path::new(&dir).display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("digimedfs-mangen: {e:#}");
            ExitCode::from(1)
        }
    }
}
