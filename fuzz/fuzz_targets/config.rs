//! The configuration loader on arbitrary UTF-8 TOML (`Config::from_toml`, what
//! `mtdgate run --config FILE` reads before the environment overrides).
//!
//! Properties: no panic; an accepted configuration passes `validate()`; written back as TOML
//! (what tests and tools do to hand a configuration to the binary) it reads back the same;
//! what `mtdgate config` prints (`toml::to_string_pretty` of `redacted()`) renders, reads back
//! as the same redacted configuration, and redacting is idempotent.
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
            let written = toml::to_string(&cfg)
                .unwrap_or_else(|e| panic!("accepted {cfg:?} cannot be written: {e}"));
            let again = Config::from_toml(&written)
                .unwrap_or_else(|e| panic!("written configuration is refused: {e}\n{written}"));
            assert_eq!(again, cfg, "written configuration reads back differently");

            let shown = cfg.redacted();
            let printed = toml::to_string_pretty(&shown)
                .unwrap_or_else(|e| panic!("{shown:?} cannot be printed: {e}"));
            let again = Config::from_toml(&printed)
                .unwrap_or_else(|e| panic!("printed configuration is refused: {e}\n{printed}"));
            assert_eq!(again, shown, "printed configuration reads back differently");
            assert_eq!(shown.redacted(), shown, "redacting twice changes it");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
