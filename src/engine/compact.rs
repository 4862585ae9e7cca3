//! Small fixed-size representations that keep per-device state under 200 bytes.

use std::cmp::Ordering;

/// A string stored without a heap allocation when it is short (up to 22 bytes) or a canonical
/// UUID (36 characters, lower- or upper-case hex), which covers the usual device and user ids.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum CompactStr {
    Inline { len: u8, buf: [u8; 22] },
    Uuid { upper: bool, bytes: [u8; 16] },
    Heap(Box<str>),
}

const HYPHENS: [usize; 4] = [8, 13, 18, 23];

impl CompactStr {
    /// The empty string.
    pub const EMPTY: CompactStr = CompactStr::Inline {
        len: 0,
        buf: [0; 22],
    };

    pub fn new(s: &str) -> Self {
        if s.len() <= 22 {
            let mut buf = [0u8; 22];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            return CompactStr::Inline {
                len: s.len() as u8,
                buf,
            };
        }
        if let Some((upper, bytes)) = parse_uuid(s) {
            return CompactStr::Uuid { upper, bytes };
        }
        CompactStr::Heap(s.into())
    }

    /// Writes the string into `out` (cleared first) and returns it as `&str`.
    pub fn write_to<'a>(&self, out: &'a mut String) -> &'a str {
        out.clear();
        match self {
            CompactStr::Inline { len, buf } => {
                // Built from a &str, so always valid UTF-8.
                out.push_str(std::str::from_utf8(&buf[..*len as usize]).unwrap_or_default())
            }
            CompactStr::Uuid { upper, bytes } => {
                let digits: &[u8; 16] = if *upper {
                    b"0123456789ABCDEF"
                } else {
                    b"0123456789abcdef"
                };
                for (i, b) in bytes.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        out.push('-');
                    }
                    out.push(digits[(b >> 4) as usize] as char);
                    out.push(digits[(b & 15) as usize] as char);
                }
            }
            CompactStr::Heap(s) => out.push_str(s),
        }
        out.as_str()
    }

    /// Whether this equals `s`, without allocating.
    pub fn eq_str(&self, s: &str) -> bool {
        match self {
            CompactStr::Inline { len, buf } => &buf[..*len as usize] == s.as_bytes(),
            CompactStr::Uuid { upper, bytes } => uuid_eq(*upper, bytes, s.as_bytes()),
            CompactStr::Heap(h) => &**h == s,
        }
    }

    /// Calls `f` with the string, formatting UUIDs on the stack (no allocation).
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            CompactStr::Inline { len, buf } => {
                f(std::str::from_utf8(&buf[..*len as usize]).unwrap_or_default())
            }
            CompactStr::Uuid { upper, bytes } => {
                let digits: &[u8; 16] = if *upper {
                    b"0123456789ABCDEF"
                } else {
                    b"0123456789abcdef"
                };
                let mut out = [0u8; 36];
                let mut n = 0;
                for (i, b) in bytes.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        out[n] = b'-';
                        n += 1;
                    }
                    out[n] = digits[(b >> 4) as usize];
                    out[n + 1] = digits[(b & 15) as usize];
                    n += 2;
                }
                f(std::str::from_utf8(&out).unwrap_or_default())
            }
            CompactStr::Heap(s) => f(s),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, CompactStr::Inline { len: 0, .. })
    }

    /// The text as an owned `String`: what `to_string()` gives, without the formatting machinery
    /// (this runs for every changelog record and output).
    pub fn as_string(&self) -> String {
        self.with_str(str::to_owned)
    }
}

impl std::fmt::Display for CompactStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No temporary String: ids are formatted for every output and changelog record.
        self.with_str(|s| f.write_str(s))
    }
}

impl std::fmt::Debug for CompactStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// Parses a canonical hyphenated UUID in one consistent case; mixed case is not canonical and
/// would not round-trip, so it is refused.
///
/// Runs for every report (device lookups compare against the key's id), hence the table.
fn parse_uuid(s: &str) -> Option<(bool, [u8; 16])> {
    let b = s.as_bytes();
    if b.len() != 36 || HYPHENS.iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    // Union of the digits' class bits: INVALID, LOWER and UPPER.
    let mut class = 0u8;
    let mut n = 0;
    for group in [&b[0..8], &b[9..13], &b[14..18], &b[19..23], &b[24..36]] {
        for pair in group.chunks_exact(2) {
            let (hi, lo) = (HEX_DIGIT[pair[0] as usize], HEX_DIGIT[pair[1] as usize]);
            class |= hi | lo;
            out[n] = (hi & 0x0f) << 4 | (lo & 0x0f);
            n += 1;
        }
    }
    if class & INVALID != 0 || class & (LOWER | UPPER) == LOWER | UPPER {
        return None;
    }
    Some((class & UPPER != 0, out))
}

/// Whether `s` is the text of the UUID `(upper, bytes)`, i.e. `parse_uuid(s) == Some((upper,
/// bytes))`, by formatting the UUID eight hex digits at a time and comparing words: several
/// times cheaper than parsing `s`, and it runs for every device lookup.
fn uuid_eq(upper: bool, bytes: &[u8; 16], s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    if s.len() != 36 || HYPHENS.iter().any(|&i| s[i] != b'-') {
        return false;
    }
    let be32 = |i: usize| u32::from_be_bytes(s[i..i + 4].try_into().expect("4 bytes")) as u64;
    let text = [
        be32(0) << 32 | be32(4),
        be32(9) << 32 | be32(14),
        be32(19) << 32 | be32(24),
        be32(28) << 32 | be32(32),
    ];
    let mut letters = 0u64;
    for (k, &want) in text.iter().enumerate() {
        // One nibble per byte, most significant first.
        let mut v = u32::from_be_bytes(bytes[4 * k..4 * k + 4].try_into().expect("4 bytes")) as u64;
        v = (v | v << 16) & 0x0000_ffff_0000_ffff;
        v = (v | v << 8) & 0x00ff_00ff_00ff_00ff;
        v = (v | v << 4) & 0x0f0f_0f0f_0f0f_0f0f;
        // 1 in every byte whose nibble is 10..=15 (no carries: a byte holds at most 15 + 6).
        let letter = ((v + 6 * ONES) >> 4) & ONES;
        let shift = if upper {
            b'A' - b'0' - 10
        } else {
            b'a' - b'0' - 10
        };
        if v + 0x30 * ONES + letter * shift as u64 != want {
            return false;
        }
        letters |= letter;
    }
    // `parse_uuid` reports upper case only when a letter is upper case.
    !upper || letters != 0
}

const INVALID: u8 = 0x80;
const LOWER: u8 = 0x10;
const UPPER: u8 = 0x20;

/// Hex digit value in the low nibble, with a class bit for lower- and upper-case letters;
/// `INVALID` for anything else.
const HEX_DIGIT: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = LOWER | (10 + c as u8);
        t[b'A' as usize + c] = UPPER | (10 + c as u8);
        c += 1;
    }
    t
};

/// An OS version packed into 64 bits (a 15-bit major and three 16-bit components), so versions
/// compare as integers. `0` means unknown or not numeric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OsVersion(pub u64);

impl OsVersion {
    pub const UNKNOWN: OsVersion = OsVersion(0);

    /// Parses `major[.minor[.patch[.build]]]`, ignoring a trailing non-numeric suffix of the last
    /// component (`"17.4.1 (21E236)"` -> 17.4.1). Anything else is unknown.
    pub fn parse(s: &str) -> OsVersion {
        let s = s.trim();
        let mut packed = 0u64;
        let mut parts = 0;
        for part in s.split('.') {
            if parts == 4 {
                break;
            }
            let digits: &str = {
                let end = part
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(part.len());
                &part[..end]
            };
            if digits.is_empty() {
                break;
            }
            let Ok(v) = digits.parse::<u16>() else {
                return OsVersion::UNKNOWN;
            };
            if parts == 0 && v > 0x7fff {
                return OsVersion::UNKNOWN;
            }
            packed |= (v as u64) << (48 - 16 * parts);
            parts += 1;
            if digits.len() != part.len() {
                break;
            }
        }
        if parts == 0 {
            OsVersion::UNKNOWN
        } else {
            OsVersion(packed | KNOWN)
        }
    }

    pub fn is_known(self) -> bool {
        self.0 & KNOWN != 0
    }

    fn components(self) -> [u16; 4] {
        let v = self.0 & !KNOWN;
        [
            (v >> 48) as u16,
            (v >> 32) as u16,
            (v >> 16) as u16,
            v as u16,
        ]
    }

    /// Canonical text form (trailing zero components dropped, at least `major.minor`).
    pub fn to_text(self) -> Option<String> {
        if !self.is_known() {
            return None;
        }
        let c = self.components();
        let mut n = 4;
        while n > 2 && c[n - 1] == 0 {
            n -= 1;
        }
        // One allocation: this runs for every changelog record.
        let mut text = String::with_capacity(4 * n + 4);
        for (i, &v) in c[..n].iter().enumerate() {
            if i > 0 {
                text.push('.');
            }
            push_decimal(&mut text, v);
        }
        Some(text)
    }

    /// Orders known versions; `None` when either is unknown.
    pub fn compare(self, other: OsVersion) -> Option<Ordering> {
        if self.is_known() && other.is_known() {
            Some(self.components().cmp(&other.components()))
        } else {
            None
        }
    }
}

/// Appends `v` in decimal, without the formatting machinery.
fn push_decimal(text: &mut String, v: u16) {
    let mut digits = [0u8; 5];
    let mut n = digits.len();
    let mut v = v;
    loop {
        n -= 1;
        digits[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[n..] {
        text.push(d as char);
    }
}

/// The top bit marks a parsed version (majors are limited to 15 bits), so "0" differs from unknown.
const KNOWN: u64 = 1 << 63;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_str_round_trips() {
        for s in [
            "",
            "dev-1",
            "alice@contoso.com",
            "0123456789012345678901",
            "01234567890123456789012",
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            "3F2504E0-4F89-11D3-9A0C-0305E82C3301",
            "3F2504e0-4f89-11d3-9a0c-0305e82c3301",
            "3f2504e0-4f89-11d3-9a0c-0305e82c330g",
            "00000000-0000-0000-0000-000000000000",
            "3f2504e0_4f89-11d3-9a0c-0305e82c3301",
            "ünïcødé-device-name-that-is-long",
        ] {
            let c = CompactStr::new(s);
            assert_eq!(c.to_string(), s);
            assert_eq!(c.as_string(), s);
            assert!(c.eq_str(s));
            assert!(!c.eq_str("other"));
        }
        assert!(matches!(
            CompactStr::new("3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
            CompactStr::Uuid { .. }
        ));
        assert_eq!(std::mem::size_of::<CompactStr>(), 24);
    }

    #[test]
    fn uuid_comparison_agrees_with_parsing() {
        let old = |upper: bool, bytes: &[u8; 16], s: &str| {
            parse_uuid(s).is_some_and(|(u, b)| u == upper && b == *bytes)
        };
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let mut bytes = [0u8; 16];
            for b in bytes.iter_mut() {
                // Mostly random, sometimes digits only (no letters at all).
                let r = next() as u8;
                *b = if round % 5 == 0 {
                    ((r % 10) << 4) | ((r / 10) % 10)
                } else {
                    r
                };
            }
            for upper in [false, true] {
                let stored = CompactStr::Uuid { upper, bytes };
                let text = stored.to_string();
                let mut candidates = vec![
                    text.clone(),
                    text.to_ascii_lowercase(),
                    text.to_ascii_uppercase(),
                    text.replacen('-', "_", 1),
                    text[..35].to_owned(),
                ];
                let i = (next() % 36) as usize;
                for c in [b'0', b'9', b'a', b'f', b'A', b'F', b'g', b'-'] {
                    let mut t = text.clone().into_bytes();
                    t[i] = c;
                    candidates.push(String::from_utf8(t).unwrap());
                }
                for c in &candidates {
                    assert_eq!(uuid_eq(upper, &bytes, c.as_bytes()), old(upper, &bytes, c));
                    assert_eq!(stored.eq_str(c), old(upper, &bytes, c), "{stored:?} {c}");
                }
            }
        }
    }

    #[test]
    fn os_versions_compare_numerically() {
        let v = OsVersion::parse;
        assert_eq!(v("17.4.1").compare(v("17.10")), Some(Ordering::Less));
        assert_eq!(v("14").compare(v("14.0.0")), Some(Ordering::Equal));
        assert_eq!(v("17.4.1 (21E236)").to_text().as_deref(), Some("17.4.1"));
        assert_eq!(v("13").to_text().as_deref(), Some("13.0"));
        assert!(!v("beta").is_known());
        assert!(!v("").is_known());
        assert!(v("0").is_known());
        assert_eq!(v("1.2.3.4").to_text().as_deref(), Some("1.2.3.4"));
        assert_eq!(
            v("0.10.65535.100").to_text().as_deref(),
            Some("0.10.65535.100")
        );
        assert!(!v("40000.1").is_known());
        assert_eq!(v("x").compare(v("1")), None);
    }
}
