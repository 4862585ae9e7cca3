//! Codecs (being written).
