//! Bookkeeping (in progress).
