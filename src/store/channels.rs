//! Per-channel settings: model, custom parameters, system prompt, and the reset watermark.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Store, StoreError, channel_prefix, decode, encode};
use crate::core::boundary::ChannelKey;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelSettings {
    /// `None`: the configured default model.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Turns with a sequence number at or below this are hidden from the context.
    #[serde(default)]
    pub reset_after: u64,
}

impl Store {
    pub fn channel_settings(&self, channel: &ChannelKey) -> Result<ChannelSettings, StoreError> {
        match self.channels.get(channel_prefix(channel))? {
            Some(bytes) => decode("channel settings", &bytes),
            None => Ok(ChannelSettings::default()),
        }
    }

    /// Applies `change` to the channel's settings atomically and returns the result.
    pub fn update_channel_settings(
        &self,
        channel: &ChannelKey,
        change: impl Fn(&mut ChannelSettings),
    ) -> Result<ChannelSettings, StoreError> {
        let key = channel_prefix(channel);
        let mut failure = None;
        let updated = self.channels.update_and_fetch(&key, |old| {
            let mut settings = old
                .and_then(|bytes| serde_json::from_slice::<ChannelSettings>(bytes).ok())
                .unwrap_or_default();
            change(&mut settings);
            match encode(&settings) {
                Ok(bytes) => Some(bytes),
                Err(err) => {
                    failure = Some(err);
                    old.map(<[u8]>::to_vec)
                }
            }
        })?;
        if let Some(err) = failure {
            return Err(err);
        }
        match updated {
            Some(bytes) => decode("channel settings", &bytes),
            None => Ok(ChannelSettings::default()),
        }
    }

    /// Hides every turn so far from future context (the turns stay on disk).
    pub fn reset_channel(&self, channel: &ChannelKey) -> Result<(), StoreError> {
        let last = self.last_seq(channel)?;
        self.update_channel_settings(channel, |settings| settings.reset_after = last)?;
        Ok(())
    }
}
