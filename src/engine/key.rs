//! Record keys: UTF-8 `part/part`, every part non-empty and without `/`.

/// Splits a two-part key, explaining what is wrong otherwise.
pub fn split_key(key: Option<&[u8]>) -> Result<(&str, &str), String> {
    let key = key.ok_or_else(|| "record has no key; expected \"tenant/id\"".to_owned())?;
    if let Some(parts) = split_ascii(key) {
        return Ok(parts);
    }
    let key = std::str::from_utf8(key).map_err(|e| format!("key is not UTF-8: {e}"))?;
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => Ok((a, b)),
        (Some(_), Some(_), None) => Err(format!("key {key:?} has an empty part")),
        _ => Err(format!(
            "key {key:?} must have exactly two parts separated by '/'"
        )),
    }
}

/// A one-part key (`tenant`), explaining what is wrong otherwise.
pub fn single_key(key: Option<&[u8]>) -> Result<&str, String> {
    let key = key.ok_or_else(|| "record has no key; expected \"tenant\"".to_owned())?;
    let key = std::str::from_utf8(key).map_err(|e| format!("key is not UTF-8: {e}"))?;
    if key.is_empty() {
        return Err("key is empty; expected \"tenant\"".to_owned());
    }
    if key.contains('/') {
        return Err(format!("key {key:?} must be the tenant alone, without '/'"));
    }
    Ok(key)
}

/// The usual case of [`split_key`] in one pass, eight bytes at a time: an ASCII key with
/// exactly one `/`, neither first nor last. `None` for anything else (the caller then takes the
/// general path, which also explains what is wrong). Runs for every device input.
fn split_ascii(key: &[u8]) -> Option<(&str, &str)> {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const SLASHES: u64 = 0x2f2f_2f2f_2f2f_2f2f;
    let mut any_high = 0u64;
    let mut slashes = 0u32;
    let mut first = usize::MAX;
    let mut words = key.chunks_exact(8);
    for (i, w) in words.by_ref().enumerate() {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        any_high |= w;
        // 0x80 in every byte that is `/`: exact per byte, no carries between bytes.
        let x = w ^ SLASHES;
        let hits = !(((x & LOW7) + LOW7) | x) & HIGH;
        if hits != 0 {
            slashes += hits.count_ones();
            first = first.min(i * 8 + hits.trailing_zeros() as usize / 8);
        }
    }
    let tail = words.remainder();
    let tail_at = key.len() - tail.len();
    for (j, &b) in tail.iter().enumerate() {
        any_high |= b as u64;
        if b == b'/' {
            slashes += 1;
            first = first.min(tail_at + j);
        }
    }
    if any_high & HIGH != 0 || slashes != 1 || first == 0 || first + 1 == key.len() {
        return None;
    }
    let (a, b) = (&key[..first], &key[first + 1..]);
    // SAFETY: every byte is ASCII (checked above), and ASCII is valid UTF-8.
    unsafe {
        Some((
            std::str::from_utf8_unchecked(a),
            std::str::from_utf8_unchecked(b),
        ))
    }
}

/// Checks one id that becomes a key part.
pub fn check_part(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{field} is empty"))
    } else if value.contains('/') {
        Err(format!("{field} {value:?} contains '/'"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert_eq!(split_key(Some(b"t/d")).unwrap(), ("t", "d"));
        assert!(split_key(None).is_err());
        assert!(split_key(Some(b"t")).unwrap_err().contains("two parts"));
        assert!(split_key(Some(b"t/d/x")).is_err());
        assert!(split_key(Some(b"/d")).unwrap_err().contains("empty"));
        assert!(split_key(Some(b"t/\xff")).unwrap_err().contains("UTF-8"));
        assert!(check_part("tenant_id", "a/b").is_err());
        assert_eq!(split_key(Some("tü/d".as_bytes())).unwrap(), ("tü", "d"));
    }

    #[test]
    fn the_fast_split_agrees_with_the_general_one() {
        // Every position of zero, one or two slashes (and a non-ASCII byte) in keys around the
        // eight-byte word size.
        for len in 1..26 {
            for a in 0..len {
                for b in a..len {
                    for c in [None, Some(0), Some(len - 1), Some(len / 2)] {
                        let mut key = vec![b'x'; len];
                        key[a] = b'/';
                        if b != a {
                            key[b] = b'/';
                        }
                        if let Some(c) = c {
                            key[c] = 0xC3;
                        }
                        let general = general(&key);
                        match split_ascii(&key) {
                            Some(parts) => assert_eq!(Some(parts), general, "{key:?}"),
                            None => {
                                assert!(general.is_none() || !key.is_ascii(), "{key:?} {general:?}")
                            }
                        }
                    }
                }
            }
        }

        fn general(key: &[u8]) -> Option<(&str, &str)> {
            let key = std::str::from_utf8(key).ok()?;
            let mut parts = key.split('/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => Some((a, b)),
                _ => None,
            }
        }
        assert!(check_part("tenant_id", "").is_err());
    }
}
