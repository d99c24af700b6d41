//! Who may use the bot at all on Discord, as the operator set it in `discord.access`: allow
//! and block lists of channels (a thread follows its parent channel), roles and users.
//!
//! Empty allow lists allow everyone; a block list wins over an allow list; the bot's
//! configured admins are always allowed, so an operator cannot lock themselves out. The
//! channel lists concern server channels only: DMs follow `discord.allow_dms`.

use std::collections::HashSet;

use serenity::all::{ChannelType, CommandInteraction};

use crate::config::DiscordAccess;

/// The lists, as numbers (so `"0123"` and `123` are the same id).
#[derive(Debug, Clone, Default)]
pub struct Access {
    allow_channels: HashSet<u64>,
    block_channels: HashSet<u64>,
    allow_roles: HashSet<u64>,
    block_roles: HashSet<u64>,
    allow_users: HashSet<u64>,
    block_users: HashSet<u64>,
}

/// Where someone asked: a server channel (and the channel a thread belongs to), or a DM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Channel { id: u64, parent: Option<u64> },
    Direct,
}

/// Why someone may not use the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Channel,
    Person,
}

impl Refusal {
    /// The short note a refused slash command gets (privately).
    pub fn note(self) -> &'static str {
        match self {
            Refusal::Channel => "This bot is not used in this channel.",
            Refusal::Person => "You cannot use this bot here; ask the server's admins.",
        }
    }
}

/// Whether a channel of this kind is a thread, which follows its parent channel.
pub fn is_thread(kind: ChannelType) -> bool {
    matches!(
        kind,
        ChannelType::PublicThread | ChannelType::PrivateThread | ChannelType::NewsThread
    )
}

/// Where a slash command was run, when its payload says so in full: Discord sends the
/// channel (a thread's with its parent) with every interaction. A text channel's
/// `parent_id` is its category, not a channel a thread follows.
pub fn place_of(command: &CommandInteraction) -> Option<Place> {
    if command.guild_id.is_none() {
        return Some(Place::Direct);
    }
    let channel = command.channel.as_ref()?;
    let parent = match is_thread(channel.kind) {
        true => Some(channel.parent_id?.get()),
        false => None,
    };
    Some(Place::Channel {
        id: command.channel_id.get(),
        parent,
    })
}

impl Access {
    pub fn from_config(config: &DiscordAccess) -> Access {
        let ids = |list: &[String]| list.iter().filter_map(|id| id.parse().ok()).collect();
        Access {
            allow_channels: ids(&config.allow_channels),
            block_channels: ids(&config.block_channels),
            allow_roles: ids(&config.allow_roles),
            block_roles: ids(&config.block_roles),
            allow_users: ids(&config.allow_users),
            block_users: ids(&config.block_users),
        }
    }

    /// Whether deciding needs to know a thread's parent channel.
    pub fn has_channel_lists(&self) -> bool {
        !self.allow_channels.is_empty() || !self.block_channels.is_empty()
    }

    pub fn decide(
        &self,
        user: u64,
        roles: &[u64],
        place: Place,
        is_bot_admin: bool,
    ) -> Result<(), Refusal> {
        if is_bot_admin {
            return Ok(());
        }
        let has_role = |list: &HashSet<u64>| roles.iter().any(|role| list.contains(role));
        if self.block_users.contains(&user) || has_role(&self.block_roles) {
            return Err(Refusal::Person);
        }
        let person_listed = !self.allow_users.is_empty() || !self.allow_roles.is_empty();
        if person_listed && !self.allow_users.contains(&user) && !has_role(&self.allow_roles) {
            return Err(Refusal::Person);
        }
        if let Place::Channel { id, parent } = place {
            let is = |list: &HashSet<u64>| {
                list.contains(&id) || parent.is_some_and(|parent| list.contains(&parent))
            };
            if is(&self.block_channels) {
                return Err(Refusal::Channel);
            }
            if !self.allow_channels.is_empty() && !is(&self.allow_channels) {
                return Err(Refusal::Channel);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(config: DiscordAccess) -> Access {
        Access::from_config(&config)
    }

    fn list(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    const IN_CHANNEL: Place = Place::Channel {
        id: 10,
        parent: None,
    };

    #[test]
    fn empty_lists_allow_everyone() {
        let open = Access::default();
        assert!(!open.has_channel_lists());
        assert_eq!(open.decide(1, &[], IN_CHANNEL, false), Ok(()));
        assert_eq!(open.decide(1, &[], Place::Direct, false), Ok(()));
    }

    #[test]
    fn a_thread_follows_its_parent_channel() {
        let only_ten = access(DiscordAccess {
            allow_channels: list(&["10"]),
            ..DiscordAccess::default()
        });
        assert!(only_ten.has_channel_lists());
        let thread_of_ten = Place::Channel {
            id: 99,
            parent: Some(10),
        };
        let thread_of_eleven = Place::Channel {
            id: 98,
            parent: Some(11),
        };
        assert_eq!(only_ten.decide(1, &[], thread_of_ten, false), Ok(()));
        assert_eq!(
            only_ten.decide(1, &[], thread_of_eleven, false),
            Err(Refusal::Channel)
        );
        let not_ten = access(DiscordAccess {
            block_channels: list(&["0010"]),
            ..DiscordAccess::default()
        });
        assert_eq!(
            not_ten.decide(1, &[], thread_of_ten, false),
            Err(Refusal::Channel)
        );
        // Channel lists leave DMs alone.
        assert_eq!(only_ten.decide(1, &[], Place::Direct, false), Ok(()));
    }

    #[test]
    fn people_are_allowed_by_user_or_role_and_a_block_wins() {
        let members = access(DiscordAccess {
            allow_roles: list(&["5"]),
            allow_users: list(&["2"]),
            block_users: list(&["3"]),
            block_roles: list(&["6"]),
            ..DiscordAccess::default()
        });
        assert_eq!(members.decide(1, &[5], IN_CHANNEL, false), Ok(()));
        assert_eq!(members.decide(2, &[], IN_CHANNEL, false), Ok(()));
        assert_eq!(
            members.decide(1, &[7], IN_CHANNEL, false),
            Err(Refusal::Person)
        );
        assert_eq!(
            members.decide(3, &[5], IN_CHANNEL, false),
            Err(Refusal::Person)
        );
        assert_eq!(
            members.decide(2, &[6], IN_CHANNEL, false),
            Err(Refusal::Person)
        );
        // The bot's own admins are never locked out.
        assert_eq!(members.decide(3, &[6], IN_CHANNEL, true), Ok(()));
    }
}
