//! `digimedfs key list|add|remove|change`: the binary's side of key slot management (opening
//! the key sources the options name, printing the result); the slot rules and the atomic
//! superblock rewrite are `digimedfs_core::keyslots`. Nothing printed holds key material.

use crate::cli::{self, KeyCommand, KeySpec};
use anyhow::{anyhow, bail, Context};
use digimedfs_core::keyslots::{self, Edit, SlotChange};
use digimedfs_core::keysource::KeySource;
use std::path::Path;

/// Runs one `digimedfs key` subcommand. A change that fails after the primary superblock was
/// replaced (writing its copy) is in force; the error then says so.
pub fn run(command: KeyCommand) -> anyhow::Result<()> {
    let backing = match &command {
        KeyCommand::List { .. } => None,
        KeyCommand::Add { backing_dir, .. }
        | KeyCommand::Remove { backing_dir, .. }
        | KeyCommand::Change { backing_dir, .. } => Some(backing_dir.clone()),
    };
    let slots = |b: &Path| keyslots::list(b).ok().map(|l| l.slots);
    let before = backing.as_deref().and_then(slots);
    let result = run_command(command);
    match (result, backing) {
        (Err(e), Some(b)) if before.is_some() && slots(&b) != before => Err(e.context(format!(
            "the change is in force all the same (the primary superblock was replaced; \
             `digimedfs key list {}` shows the slots), but superblock.bak still lists the old \
             slots until the next read-write mount, key command or fsck.digimed repair",
            b.display()
        ))),
        (result, _) => result,
    }
}

fn run_command(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::List { backing_dir } => {
            let listing = keyslots::list(&backing_dir)
                .with_context(|| format!("listing the key slots of {}", backing_dir.display()))?;
            print!("{listing}");
            Ok(())
        }
        KeyCommand::Add {
            key,
            new,
            backing_dir,
        } => {
            let current = current_key(&key)?;
            let new = new_key(&new)?;
            let change = keyslots::edit(&backing_dir, current.as_ref(), Edit::Add(new.as_ref()))
                .with_context(|| format!("adding a key slot to {}", backing_dir.display()))?;
            report(&change, &format!("added for {}", new.describe()));
            Ok(())
        }
        KeyCommand::Remove {
            key,
            slot,
            force,
            backing_dir,
        } => {
            let current = current_key(&key)?;
            let change = keyslots::edit(
                &backing_dir,
                current.as_ref(),
                Edit::Remove { index: slot, force },
            )
            .with_context(|| format!("removing key slot {slot} of {}", backing_dir.display()))?;
            report(&change, "removed");
            Ok(())
        }
        KeyCommand::Change {
            key,
            new,
            backing_dir,
        } => {
            let current = current_key(&key)?;
            let new = new_key(&new)?;
            let change = keyslots::edit(&backing_dir, current.as_ref(), Edit::Change(new.as_ref()))
                .with_context(|| format!("changing a key slot of {}", backing_dir.display()))?;
            report(
                &change,
                &format!(
                    "replaced: it now opens with {} instead of {}",
                    new.describe(),
                    current.describe()
                ),
            );
            Ok(())
        }
    }
}

/// The key that unlocks the filesystem now (required).
fn current_key(key: &cli::KeyArgs) -> anyhow::Result<Box<dyn KeySource>> {
    let spec = cli::optional_key_spec(key)?.ok_or_else(|| {
        anyhow!(
            "no current key given: use --key-file PATH, or --keyservice URL --tenant ID \
             --token-file PATH --ca-file PATH"
        )
    })?;
    super::key_source(&spec)
}

/// The new key of `add` and `change` (required): an existing key file that passes the key file
/// checks, or the key service.
fn new_key(new: &cli::NewKeyArgs) -> anyhow::Result<Box<dyn KeySource>> {
    let spec = new.spec()?.ok_or_else(|| {
        anyhow!(
            "no new key given: use --new-key-file PATH (made by `digimedfs keygen PATH`), or \
                 --new-keyservice URL --new-tenant ID --new-token-file PATH --new-ca-file PATH"
        )
    })?;
    if let KeySpec::File(path) = &spec {
        if !path.exists() {
            bail!(
                "new key file {} does not exist: make it first with `digimedfs keygen {}`",
                path.display(),
                path.display()
            );
        }
    }
    super::key_source(&spec)
}

/// Prints what changed: `filesystem U: key slot N <what>`, then the slots now in use.
fn report(change: &SlotChange, what: &str) {
    let slot = change
        .added
        .as_ref()
        .or(change.removed.as_ref())
        .map_or(0, |s| s.index);
    println!("filesystem {}: key slot {slot} {what}", change.fs_uuid);
    println!("key slots now:");
    for s in &change.slots {
        println!("  {s}");
    }
}
