//! EROFS images as composefs uses them: on-disk structures, a reader and a writer.

pub mod format;
pub mod reader;
pub mod writer;
