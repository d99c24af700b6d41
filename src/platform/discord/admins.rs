//! Who may do what on Discord.
//!
//! Configured users and roles are admins of the bot itself (budgets, no spending limit).
//! Members with Administrator or Manage Server are admins of their server only (spending here, a
//! channel's model and prompt): anyone can create a server and invite the bot, so server
//! rights never reach the bot's own settings.

use std::collections::HashSet;

use serenity::all::Permissions;

use crate::config::DiscordConfig;

/// The configured admins, as numbers (so `"0123"` and `123` are the same id).
#[derive(Debug, Clone, Default)]
pub struct Admins {
    users: HashSet<u64>,
    roles: HashSet<u64>,
}

/// What one person may do where they asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rights {
    pub is_admin: bool,
    pub is_bot_admin: bool,
}

impl Admins {
    pub fn from_config(config: &DiscordConfig) -> Admins {
        let ids = |list: &[String]| list.iter().filter_map(|id| id.parse().ok()).collect();
        Admins {
            users: ids(&config.admins),
            roles: ids(&config.admin_roles),
        }
    }

    /// `permissions` are the member's in the server (slash commands carry them; messages do
    /// not, and DMs have none).
    pub fn rights(&self, user: u64, roles: &[u64], permissions: Option<Permissions>) -> Rights {
        let is_bot_admin =
            self.users.contains(&user) || roles.iter().any(|role| self.roles.contains(role));
        let server_admin = permissions.is_some_and(|permissions| {
            permissions.contains(Permissions::ADMINISTRATOR)
                || permissions.contains(Permissions::MANAGE_GUILD)
        });
        Rights {
            is_admin: is_bot_admin || server_admin,
            is_bot_admin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admins() -> Admins {
        Admins::from_config(&DiscordConfig {
            admins: vec!["0100".into()],
            admin_roles: vec!["7".into()],
            ..DiscordConfig::default()
        })
    }

    #[test]
    fn configured_ids_and_roles_make_bot_admins() {
        let both = Rights {
            is_admin: true,
            is_bot_admin: true,
        };
        assert_eq!(admins().rights(100, &[], None), both);
        assert_eq!(admins().rights(5, &[3, 7], None), both);
    }

    #[test]
    fn server_rights_make_server_admins_only() {
        let server = Rights {
            is_admin: true,
            is_bot_admin: false,
        };
        for permissions in [
            Permissions::ADMINISTRATOR,
            Permissions::MANAGE_GUILD,
            Permissions::MANAGE_GUILD | Permissions::SEND_MESSAGES,
        ] {
            assert_eq!(admins().rights(5, &[], Some(permissions)), server);
        }
        let nobody = Rights {
            is_admin: false,
            is_bot_admin: false,
        };
        assert_eq!(
            admins().rights(5, &[3], Some(Permissions::SEND_MESSAGES)),
            nobody
        );
        assert_eq!(admins().rights(5, &[], None), nobody);
    }
}
