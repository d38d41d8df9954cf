//! `digimedfs key`: the command line of key slot management (list, add, remove, change; the
//! work is `digimedfs_core::keyslots`). The new key source is named by `--new-key-file` or by
//! the key service options with a `new-` prefix (`--new-keyservice`, `--new-tenant`,
//! `--new-token-file`, `--new-ca-file`), next to the current key's own options.

use super::{KeyArgs, KeySpec, ServiceSpec};
use anyhow::bail;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `digimedfs key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the key slots (index, kind, key id); needs no key and never prints key material.
    List {
        /// The backing directory holding the filesystem.
        backing_dir: PathBuf,
    },
    /// Add a key slot for a new key file or the key service, unlocking with a current key. At
    /// most 8 slots; a key already in a slot is refused. The filesystem must not be mounted.
    Add {
        /// A key that unlocks the filesystem now.
        #[command(flatten)]
        key: KeyArgs,
        /// The key to add.
        #[command(flatten)]
        new: NewKeyArgs,
        /// The backing directory holding the filesystem.
        backing_dir: PathBuf,
    },
    /// Remove key slot N, unlocking with a current key. The last slot is never removed; the
    /// slot the given key opens only with --force. The filesystem must not be mounted.
    Remove {
        /// A key that unlocks the filesystem now.
        #[command(flatten)]
        key: KeyArgs,
        /// The slot to remove (see `digimedfs key list`).
        #[arg(long, value_name = "N")]
        slot: u8,
        /// Also remove the slot the given key opens (that key then no longer unlocks the
        /// filesystem).
        #[arg(long)]
        force: bool,
        /// The backing directory holding the filesystem.
        backing_dir: PathBuf,
    },
    /// Replace the key slot the current key opens with one for the new key, in one superblock
    /// write (a new key file, or a move to or from the key service). The filesystem must not
    /// be mounted.
    Change {
        /// The key to replace (it unlocks the filesystem now).
        #[command(flatten)]
        key: KeyArgs,
        /// The new key.
        #[command(flatten)]
        new: NewKeyArgs,
        /// The backing directory holding the filesystem.
        backing_dir: PathBuf,
    },
}

/// The new key of `key add` and `key change`: a key file or the key service.
#[derive(Debug, Clone, Default, Args)]
pub struct NewKeyArgs {
    /// The new key file (made by `digimedfs keygen`; mode 0600).
    #[arg(id = "new_key_file", long = "new-key-file", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// The key service at URL as the new key; needs --new-tenant, --new-token-file and
    /// --new-ca-file.
    #[arg(id = "new_url", long = "new-keyservice", value_name = "URL")]
    pub url: Option<String>,
    /// The tenant at the new key service (must be the filesystem's tenant).
    #[arg(id = "new_tenant", long = "new-tenant", value_name = "ID")]
    pub tenant: Option<String>,
    /// File holding the tenant's token for the new key service.
    #[arg(id = "new_token_file", long = "new-token-file", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) the new key service's certificate must chain to.
    #[arg(id = "new_ca_file", long = "new-ca-file", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
}

impl NewKeyArgs {
    /// The new key source these options name; `None` if none was given, an error if both a key
    /// file and key service options, or only some key service options, were given.
    pub fn spec(&self) -> anyhow::Result<Option<KeySpec>> {
        let service = match (&self.url, &self.tenant, &self.token_file, &self.ca_file) {
            (None, None, None, None) => None,
            (Some(url), Some(tenant), Some(token_file), Some(ca_file)) => Some(ServiceSpec {
                url: url.clone(),
                tenant: tenant.clone(),
                token_file: token_file.clone(),
                ca_file: ca_file.clone(),
            }),
            (url, tenant, token, ca) => {
                let missing: Vec<&str> = [
                    (url.is_none(), "--new-keyservice URL"),
                    (tenant.is_none(), "--new-tenant ID"),
                    (token.is_none(), "--new-token-file PATH"),
                    (ca.is_none(), "--new-ca-file PATH"),
                ]
                .into_iter()
                .filter_map(|(m, name)| m.then_some(name))
                .collect();
                bail!(
                    "incomplete new key service options: also give {}",
                    missing.join(", ")
                )
            }
        };
        match (&self.key_file, service) {
            (Some(_), Some(_)) => bail!(
                "--new-key-file and the --new-keyservice options are mutually exclusive: give one \
                 new key"
            ),
            (Some(f), None) => Ok(Some(KeySpec::File(f.clone()))),
            (None, Some(s)) => Ok(Some(KeySpec::Service(s))),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Cli;
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<KeyCommand, clap::Error> {
        let mut argv = vec!["digimedfs", "key"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            super::super::Command::Key { command } => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn current_and_new_key_options_parse_side_by_side() {
        let cmd = parse(&[
            "add",
            "--keyservice",
            "https://ks:8443",
            "--tenant",
            "lab",
            "--token-file",
            "/t",
            "--ca-file",
            "/ca",
            "--new-key-file",
            "/n.key",
            "/b",
        ])
        .expect("parses");
        let KeyCommand::Add { key, new, .. } = cmd else {
            panic!("not add: {cmd:?}")
        };
        assert_eq!(key.service.tenant.as_deref(), Some("lab"));
        assert_eq!(
            new.spec().expect("spec"),
            Some(KeySpec::File("/n.key".into()))
        );
        let cmd = parse(&[
            "change",
            "--key-file",
            "/old.key",
            "--new-keyservice",
            "https://ks:8443",
            "--new-tenant",
            "lab",
            "--new-token-file",
            "/t",
            "/b",
        ])
        .expect("parses");
        let KeyCommand::Change { key, new, .. } = cmd else {
            panic!("not change: {cmd:?}")
        };
        assert_eq!(
            key.key_file.as_deref(),
            Some(std::path::Path::new("/old.key"))
        );
        let e = new.spec().expect_err("incomplete").to_string();
        assert_eq!(
            e,
            "incomplete new key service options: also give --new-ca-file PATH"
        );
        assert!(
            parse(&["remove", "--key-file", "/k", "/b"]).is_err(),
            "--slot required"
        );
    }
}
