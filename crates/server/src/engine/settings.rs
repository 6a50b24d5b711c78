//! Account settings: per-principal values over account defaults over AWS's defaults.

use flotilla_api::requests::*;
use flotilla_api::responses::{self, ListItems, ListResponse, SettingResponse, SettingView};
use flotilla_model::{AccountSetting, EcsError};

use super::{Engine, RequestContext, max_results, paginate};
use crate::db::TxnBuilder;

/// Every setting name with the value an account starts with.
const SETTING_DEFAULTS: &[(&str, &str)] = &[
    ("awsvpcTrunking", "disabled"),
    ("containerInsights", "disabled"),
    ("containerInstanceLongArnFormat", "enabled"),
    ("defaultLogDriverMode", "non-blocking"),
    ("fargateEventWindows", "disabled"),
    ("fargateFIPSMode", "disabled"),
    ("fargateTaskRetirementWaitPeriod", "7"),
    ("guardDutyActivate", "off"),
    ("serviceLongArnFormat", "enabled"),
    ("tagResourceAuthorization", "on"),
    ("taskLongArnFormat", "enabled"),
];

fn validate_setting(name: &str, value: &str) -> Result<(), EcsError> {
    let accepted: &[&str] = match name {
        "serviceLongArnFormat" | "taskLongArnFormat" | "containerInstanceLongArnFormat" => {
            if value == "disabled" {
                return Err(EcsError::UnsupportedFeature(format!(
                    "Flotilla always uses the long ARN format; {name} cannot be disabled."
                )));
            }
            &["enabled"]
        }
        "awsvpcTrunking" | "fargateFIPSMode" | "fargateEventWindows" => &["enabled", "disabled"],
        "containerInsights" => &["enabled", "disabled", "enhanced"],
        "tagResourceAuthorization" | "guardDutyActivate" => &["on", "off"],
        "defaultLogDriverMode" => &["blocking", "non-blocking"],
        "fargateTaskRetirementWaitPeriod" => &["0", "7", "14"],
        other => {
            let names: Vec<&str> = SETTING_DEFAULTS.iter().map(|(n, _)| *n).collect();
            return Err(EcsError::invalid(format!(
                "Invalid setting name '{other}'; accepted: {}.",
                names.join(", ")
            )));
        }
    };
    if accepted.contains(&value) {
        Ok(())
    } else {
        Err(EcsError::invalid(format!(
            "Invalid value '{value}' for {name}; accepted: {}.",
            accepted.join(", ")
        )))
    }
}

impl Engine {
    fn account_root(&self, ctx: &RequestContext) -> String {
        format!("arn:aws:iam::{}:root", ctx.scope.account_id)
    }

    pub(crate) async fn put_account_setting(
        &self,
        ctx: &RequestContext,
        request: PutAccountSettingRequest,
        account_default: bool,
    ) -> Result<SettingResponse, EcsError> {
        let name = required(&request.name, "name")?.to_owned();
        let value = required(&request.value, "value")?.to_owned();
        validate_setting(&name, &value)?;
        if account_default && request.principal_arn.is_some() {
            return Err(EcsError::invalid(
                "PutAccountSettingDefault does not take a principalArn.",
            ));
        }
        let principal = if account_default {
            None
        } else {
            Some(
                request
                    .principal_arn
                    .clone()
                    .unwrap_or_else(|| ctx.principal_arn.clone()),
            )
        };
        let setting = AccountSetting {
            name: name.clone(),
            value,
            principal_arn: principal.clone(),
        };
        let mut txn = TxnBuilder::new();
        txn.put(&ctx.keys().setting(principal.as_deref(), &name), &setting);
        self.db.commit(txn.build()).await?;
        Ok(SettingResponse {
            setting: responses::account_setting(&setting, &self.account_root(ctx)),
        })
    }

    pub(crate) async fn delete_account_setting(
        &self,
        ctx: &RequestContext,
        request: DeleteAccountSettingRequest,
    ) -> Result<SettingResponse, EcsError> {
        let name = required(&request.name, "name")?.to_owned();
        if !SETTING_DEFAULTS.iter().any(|(n, _)| *n == name) {
            return Err(EcsError::invalid(format!("Invalid setting name '{name}'.")));
        }
        let principal = request
            .principal_arn
            .clone()
            .unwrap_or_else(|| ctx.principal_arn.clone());
        let key = ctx.keys().setting(Some(&principal), &name);
        let existing = self.db.get::<AccountSetting>(&key).await?;
        let setting = match existing {
            Some(found) => {
                let mut txn = TxnBuilder::new();
                txn.delete(&key);
                self.db.commit(txn.build()).await?;
                found.value
            }
            None => {
                return Err(EcsError::invalid(format!(
                    "The account setting {name} is not set for principal {principal}."
                )));
            }
        };
        Ok(SettingResponse {
            setting: responses::account_setting(&setting, &self.account_root(ctx)),
        })
    }

    pub(crate) async fn list_account_settings(
        &self,
        ctx: &RequestContext,
        request: ListAccountSettingsRequest,
    ) -> Result<ListResponse<SettingView>, EcsError> {
        let limit = max_results(request.max_results, 10)?;
        if request.value.is_some() && request.name.is_none() {
            return Err(EcsError::invalid(
                "value can only be used together with name.",
            ));
        }
        let principal = request
            .principal_arn
            .clone()
            .unwrap_or_else(|| ctx.principal_arn.clone());
        let stored = self
            .db
            .list::<AccountSetting>(&ctx.keys().settings())
            .await?;
        let effective = request.effective_settings.unwrap_or(false);
        let mut settings: Vec<AccountSetting> = Vec::new();
        for (name, default_value) in SETTING_DEFAULTS {
            let own = stored.iter().find(|s| {
                s.value.name == *name
                    && s.value.principal_arn.as_deref() == Some(principal.as_str())
            });
            let account = stored
                .iter()
                .find(|s| s.value.name == *name && s.value.principal_arn.is_none());
            let chosen = match (own, account, effective) {
                (Some(own), _, _) => Some(own.value.clone()),
                (None, Some(account), true) => Some(account.value.clone()),
                (None, None, true) => Some(AccountSetting {
                    name: (*name).to_owned(),
                    value: (*default_value).to_owned(),
                    principal_arn: None,
                }),
                _ => None,
            };
            if let Some(setting) = chosen {
                settings.push(setting);
            }
        }
        settings.retain(|s| request.name.as_ref().is_none_or(|n| &s.name == n));
        settings.retain(|s| request.value.as_ref().is_none_or(|v| &s.value == v));
        let names: Vec<String> = settings.iter().map(|s| s.name.clone()).collect();
        let (page, next_token) =
            paginate(names, request.next_token.as_deref(), limit, "settings:")?;
        let root = self.account_root(ctx);
        let views = settings
            .iter()
            .filter(|s| page.contains(&s.name))
            .map(|s| responses::account_setting(s, &root))
            .collect();
        Ok(ListResponse {
            items: ListItems::Settings(views),
            next_token,
        })
    }
}
