//! The partner catalogue parser (`Catalogue::parse`, what `processing.catalogue` loads) on
//! arbitrary UTF-8. The first byte picks the deployment cloud (`public`, `gcc-high`,
//! `21vianet`, or an odd one), the rest is the file.
//!
//! Properties: no panic; an accepted catalogue names the requested cloud, has at most 255
//! partners, and every partner is found again by its id at its own index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtdgate::catalogue::Catalogue;

const CLOUDS: [&str; 4] = ["public", "gcc-high", "21vianet", ""];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let cloud = CLOUDS[selector as usize % CLOUDS.len()];
    if let Ok(cat) = Catalogue::parse(text, cloud) {
        assert_eq!(cat.cloud(), cloud);
        assert!(cat.clouds().iter().any(|c| c == cloud));
        assert!(cat.partners().len() <= u8::MAX as usize);
        for (i, p) in cat.partners().iter().enumerate() {
            assert_eq!(cat.index(&p.id), Some(i as u8), "partner {:?}", p.id);
            let _ = cat.offered(i as u8);
        }
    }
});
