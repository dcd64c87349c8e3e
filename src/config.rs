//! Plain configuration structs with their defaults. No clap, no I/O.
