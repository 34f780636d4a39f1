//! The `list_notes` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::ToolError;

use crate::generated::Ctx;
use crate::generated::types::{ListNotesInput, ListNotesOutput, ListNotesOutputNotesItem};

/// Lists note ids and titles, optionally only those with a tag.
pub(crate) async fn list_notes(
    ctx: &Ctx,
    input: ListNotesInput,
) -> Result<ListNotesOutput, ToolError> {
    let store = ctx.state().store();
    let notes = store
        .notes
        .iter()
        .filter(|(_, n)| input.tag.as_ref().is_none_or(|t| n.tags.contains(t)))
        .map(|(&id, n)| ListNotesOutputNotesItem {
            id,
            title: n.title.clone(),
        })
        .collect();
    Ok(ListNotesOutput { notes })
}
