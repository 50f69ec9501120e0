//! Branch-store sink (in progress).
