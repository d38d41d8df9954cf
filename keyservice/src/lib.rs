//! The digimedfs key service (under construction).
