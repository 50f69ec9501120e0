//! Source catalog (in progress).
