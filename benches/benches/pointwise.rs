//! Placeholder: this bench lands with its issue.
fn main() {}
