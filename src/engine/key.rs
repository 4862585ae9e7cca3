//! Record keys: UTF-8 `part/part`, every part non-empty and without `/`.

/// Splits a two-part key, explaining what is wrong otherwise.
pub fn split_key(key: Option<&[u8]>) -> Result<(&str, &str), String> {
    let key = key.ok_or_else(|| "record has no key; expected \"tenant/id\"".to_owned())?;
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
        assert!(check_part("tenant_id", "").is_err());
    }
}
