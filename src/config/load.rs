//! Where settings come from: defaults, then `config.toml`, then the environment
//! (`DATABASE_URL`, `DCB_STORE_SCHEMA`), then setters.

#[cfg(feature = "toml")]
use std::path::Path;

use super::Config;
use crate::error::{Error, Result};

impl Config {
    /// Defaults, overridden by the TOML file at `path` and then by the environment:
    /// `DATABASE_URL` and `DCB_STORE_SCHEMA`.
    ///
    /// # Errors
    /// [`Error::Config`] when the file does not exist, cannot be read or parsed, or
    /// holds an invalid setting.
    #[cfg(feature = "toml")]
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, path)
    }

    /// Like [`Config::load`], but a file that does not exist means the defaults (still
    /// overridden by the environment).
    ///
    /// # Errors
    /// [`Error::Config`] when the file exists but cannot be read or parsed, or holds
    /// an invalid setting.
    #[cfg(feature = "toml")]
    pub fn load_or_default(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut config = Config::default();
                config.apply_env();
                config.validate()?;
                Ok(config)
            }
            Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
        }
    }

    #[cfg(feature = "toml")]
    fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        config.apply_env();
        config.validate()?;
        Ok(config)
    }

    /// Applies `DATABASE_URL` and `DCB_STORE_SCHEMA` when they are set and not empty.
    pub fn apply_env(&mut self) {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()) {
            self.database_url = Some(url);
        }
        if let Some(schema) = std::env::var("DCB_STORE_SCHEMA")
            .ok()
            .filter(|v| !v.is_empty())
        {
            self.schema = schema;
        }
    }
}

#[cfg(all(test, feature = "toml"))]
mod tests {
    use super::*;
    use crate::base::connect::PoolerMode;

    #[test]
    fn pooler_modes_are_read_by_name_and_an_unknown_one_is_refused_naming_the_key() {
        let path = Path::new("config.toml");
        for (name, mode) in [
            ("none", PoolerMode::None),
            ("session", PoolerMode::Session),
            ("transaction", PoolerMode::Transaction),
        ] {
            let config = Config::from_toml(&format!("pooler_mode = {name:?}"), path).unwrap();
            assert_eq!(config.pooler_mode(), mode);
            assert_eq!(mode.as_str(), name);
        }
        assert_eq!(Config::default().pooler_mode(), PoolerMode::None);
        let refused = Config::from_toml("pooler_mode = \"statement\"", path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("pooler_mode"), "{refused}");
        let bad_url = Config::from_toml("direct_url = \"postgres://a@h:notaport/x\"", path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(bad_url.contains("direct_url"), "{bad_url}");
    }
}
