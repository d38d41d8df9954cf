//! Exit status of `fsck.digimed`, as fsck(8): bits that may be combined (1 | 4 = 5 when some
//! problems were repaired and others were not).

/// No problems found.
pub const CLEAN: u8 = 0;
/// Problems were found and corrected.
pub const CORRECTED: u8 = 1;
/// Problems were left uncorrected.
pub const UNCORRECTED: u8 = 4;
/// Operational error: wrong key, unreadable backing directory, mounted while repairing.
pub const OPERATIONAL: u8 = 8;
/// Usage or syntax error.
pub const USAGE: u8 = 16;
/// Cancelled by the user.
pub const CANCELLED: u8 = 32;
