//! The key options every command takes (`digimedfs`, `mkfs.digimed`, `fsck.digimed`), defined
//! once: a key file, or the key service with its tenant, token file and CA certificate. Which
//! of them a command requires it says with clap argument groups over these ids (`key_file`,
//! `url`, `tenant`, `token_file`, `ca_file`); [`KeyArgs::open`] refuses anything but exactly
//! one complete key source, and key service options without `--keyservice`.

use crate::open_key_source;
use clap::Args;
use digimedfs_core::keysource::KeySource;
use std::path::PathBuf;

/// A key file or the key service.
#[derive(Debug, Clone, Default, Args)]
pub struct KeyArgs {
    /// Key file (see `digimedfs keygen`), the single-machine default; for a mount the same as
    /// -o key_file=PATH.
    #[arg(long = "key-file", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// The key service instead of a key file.
    #[command(flatten)]
    pub service: KeyServiceArgs,
}

/// The key service options.
#[derive(Debug, Clone, Default, Args)]
pub struct KeyServiceArgs {
    /// The key service at URL (`https://host:port`) instead of a key file; needs --tenant,
    /// --token-file and --ca-file (for a mount the same as -o keyservice=URL).
    #[arg(long = "keyservice", value_name = "URL")]
    pub url: Option<String>,
    /// The tenant at the key service (-o tenant=ID); for mkfs.digimed also the tenant the new
    /// filesystem belongs to (default with --key-file: `default`).
    #[arg(long, value_name = "ID")]
    pub tenant: Option<String>,
    /// File holding the tenant's key service token (-o token_file=PATH).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) the key service's certificate must chain to (-o ca_file=PATH).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
}

impl KeyArgs {
    /// Whether any key option was given.
    pub fn given(&self) -> bool {
        self.key_file.is_some() || self.service.url.is_some()
    }

    /// Opens the key source these options name (exactly one must be complete; --token-file
    /// and --ca-file only go with --keyservice).
    pub fn open(&self) -> digimedfs_core::Result<Box<dyn KeySource>> {
        let s = &self.service;
        if s.url.is_none() && (s.token_file.is_some() || s.ca_file.is_some()) {
            return Err(digimedfs_core::Error::invalid(
                "--token-file and --ca-file go with --keyservice URL",
            ));
        }
        open_key_source(
            self.key_file.as_deref(),
            self.service.url.as_deref(),
            self.service.tenant.as_deref(),
            self.service.token_file.as_deref(),
            self.service.ca_file.as_deref(),
        )
    }
}
