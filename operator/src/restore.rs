//! Restoring status after `clusterctl move`, which copies objects but never their status:
//! a Machine or Deployment that arrives with no status and a
//! [`STATUS_BACKUP_ANNOTATION`] gets that status back before anything decides about it, so
//! a deployed server is not taken for a new one (and commissioned, rebooting it).

use ironpool_crds::capi::STATUS_BACKUP_ANNOTATION;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Field manager of restored status; each writer takes its fields back with its next apply.
pub const RESTORE_MANAGER: &str = "ironpool-restore";

/// A backup as written before a move: the object's UID then, and its status.
pub fn backup_value<K: Resource + Serialize>(obj: &K) -> Option<String> {
    let status = serde_json::to_value(obj).ok()?.get("status").cloned()?;
    Some(serde_json::json!({ "uid": obj.uid()?, "status": status }).to_string())
}

/// The status `obj` should get back: its backup's, when the backup was made of another
/// object (the one clusterctl moved it from: same name, another UID) and `obj` has none.
/// `Some(None)`: the backup is spent (a moved object that has its status) and can go.
pub fn backup_of<K: Resource + Serialize>(obj: &K) -> Option<Option<serde_json::Value>> {
    let text = obj.annotations().get(STATUS_BACKUP_ANNOTATION)?;
    let backup: serde_json::Value = serde_json::from_str(text).ok()?;
    if backup["uid"].as_str() == obj.uid().as_deref() {
        // Made here, for a move that has not happened (yet).
        return None;
    }
    let has_status = serde_json::to_value(obj)
        .ok()
        .and_then(|v| v.get("status").cloned())
        .is_some_and(|s| !s.is_null() && s != serde_json::json!({}));
    let status = backup.get("status").filter(|s| s.is_object()).cloned();
    Some(if has_status { None } else { status })
}

/// Restores `obj`'s status from a moved object's backup, and drops a spent backup; true
/// when it restored (the caller stops there: the write's event brings the object back).
pub async fn restore<K>(api: &Api<K>, obj: &K) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let Some(found) = backup_of(obj) else {
        return Ok(false);
    };
    let name = obj.name_any();
    if let Some(status) = found {
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": { "name": name },
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(RESTORE_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        tracing::info!(kind = %K::kind(&()), %name, "status restored from its backup (moved by clusterctl)");
        return Ok(true);
    }
    let drop = serde_json::json!({"metadata": {"annotations": {STATUS_BACKUP_ANNOTATION: null}}});
    // Spent: dropping it is tidiness, never a reason to stop the reconcile.
    if let Err(e) = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&drop))
        .await
    {
        tracing::warn!(kind = %K::kind(&()), %name, error = %e, "could not drop a spent status backup");
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironpool_crds::Machine;

    #[test]
    fn only_a_moved_status_less_object_is_restored() {
        let mut m = crate::capi::test_server("r1", None);
        m.metadata.uid = Some("source-uid".into());
        m.status = serde_json::from_value(serde_json::json!({"phase": "Deployed"})).ok();
        assert_eq!(backup_of(&m), None, "no backup");
        let backup = backup_value(&m).unwrap();
        m.annotations_mut()
            .insert(STATUS_BACKUP_ANNOTATION.into(), backup);
        assert_eq!(backup_of(&m), None, "made here: not used, not dropped");
        // As clusterctl creates it in the target: another UID, no status.
        let mut moved: Machine = m.clone();
        moved.metadata.uid = Some("target-uid".into());
        moved.status = None;
        let status = backup_of(&moved).unwrap().unwrap();
        assert_eq!(status["phase"], "Deployed");
        moved.status = Some(Default::default());
        assert!(
            backup_of(&moved).unwrap().is_some(),
            "an empty status is no status"
        );
        moved.status = serde_json::from_value(serde_json::json!({"phase": "Deployed"})).ok();
        assert_eq!(
            backup_of(&moved),
            Some(None),
            "restored: the backup is spent"
        );
        moved
            .annotations_mut()
            .insert(STATUS_BACKUP_ANNOTATION.into(), "not json".into());
        assert_eq!(backup_of(&moved), None, "a broken backup is ignored");
    }
}
