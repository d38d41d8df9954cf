//! Checking and repairing a filesystem (fsck.digimed).
