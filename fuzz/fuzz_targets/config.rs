//! The configuration loader on arbitrary UTF-8 TOML (`Config::from_toml`, what
//! `mtdgate run --config FILE` reads before the environment overrides).
//!
//! Properties: no panic; an accepted configuration passes `validate()`; what `mtdgate config`
//! prints for it (`toml::to_string_pretty`) can be rendered and reads back as the same
//! configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtdgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(cfg) => {
            cfg.validate().expect("an accepted configuration is valid");
            let printed = toml::to_string_pretty(&cfg)
                .unwrap_or_else(|e| panic!("accepted {cfg:?} cannot be printed: {e}"));
            let again = Config::from_toml(&printed)
                .unwrap_or_else(|e| panic!("printed configuration is refused: {e}\n{printed}"));
            assert_eq!(again, cfg, "printed configuration reads back differently");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
