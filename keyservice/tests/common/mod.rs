//! Shared test setup: a state directory, demo TLS, an in-process server on 127.0.0.1:0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use digimedfs_keyservice::admin::Admin;
use digimedfs_keyservice::client::KeyService;
use digimedfs_keyservice::server::{BackgroundServer, ServerConfig};
use digimedfs_keyservice::state::Credential;
use digimedfs_keyservice::tls::{write_demo, DemoTls};

pub const PASS: &str = "correct horse battery staple";

pub fn cred() -> Credential {
    Credential::passphrase(PASS).unwrap()
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub tls: DemoTls,
    pub admin: Admin,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        digimedfs_keyservice::admin::init(&state, &cred()).unwrap();
        let tls = write_demo(&dir.path().join("tls")).unwrap();
        let admin = Admin::open(&state, &cred()).unwrap();
        Env {
            dir,
            state,
            tls,
            admin,
        }
    }

    pub fn config(&self) -> ServerConfig {
        ServerConfig::new(
            self.state.clone(),
            "127.0.0.1:0".parse().unwrap(),
            self.tls.cert.clone(),
            self.tls.key.clone(),
        )
    }

    pub fn start(&self) -> BackgroundServer {
        BackgroundServer::start(self.config(), cred()).unwrap()
    }

    pub fn client(&self, server: &BackgroundServer, tenant: &str, token: &str) -> KeyService {
        KeyService::new(&server.url(), tenant, token, &self.tls.ca).unwrap()
    }

    /// Adds a tenant and returns a token for it.
    pub fn tenant(&self, id: &str) -> String {
        self.admin.tenant_add(id).unwrap();
        self.admin.token_issue(Some(id)).unwrap().to_string()
    }

    pub fn audit(&self) -> String {
        std::fs::read_to_string(self.state.join("audit.log")).unwrap()
    }
}

/// Every file under `dir`, recursively, as (path, bytes).
pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
