/*
 * fleet_reconciler.c - desired state (protocol.md 4), the C twin of
 * fleet/device/reconciler.py: the latest desired doc per source topic (own, grp/all, each
 * group), the highest rev applied only if it is higher than the applied rev, an intent
 * whose meeting.until has passed applied as no meeting.
 */
#include "fleet_core_internal.h"

#include <string.h>

static const char *const TAG = fleet_core_tag;

static bool intent_lapsed(fleet_core_t *core, const fleet_intent_t *intent)
{
    double now;
    return intent->has_until && fleet_core_unix_now(core, &now) && intent->until <= now;
}

static const char *source_name(fleet_core_t *core, size_t slot)
{
    if (slot == FLEET_SRC_OWN) {
        return core->id;
    }
    if (slot == FLEET_SRC_ALL) {
        return "grp/all";
    }
    return core->groups[slot - FLEET_SRC_GROUP0];
}

static void reconcile(fleet_core_t *core)
{
    /* On an equal rev (a correct controller never writes one) the device doc wins, then a
     * named group, then grp/all (protocol.md 4.2): visit them in that order and keep the
     * first of the highest. */
    size_t best = FLEET_SOURCES;
    for (size_t k = 0; k < FLEET_SOURCES; k++) {
        size_t i = k == 0 ? FLEET_SRC_OWN : k == FLEET_SOURCES - 1 ? FLEET_SRC_ALL : k + 1;
        if (core->sources[i].has_doc &&
            (best == FLEET_SOURCES || core->sources[i].doc.rev > core->sources[best].doc.rev)) {
            best = i;
        }
    }
    if (best == FLEET_SOURCES || core->sources[best].doc.rev <= core->applied_rev) {
        return; /* never backwards, and an equal rev is the one already applied */
    }
    const fleet_desired_t *d = &core->sources[best].doc;
    const fleet_intent_t *want = d->has_meeting ? &d->meeting : NULL;
    if (want != NULL && intent_lapsed(core, want)) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "desired rev %lld: meeting %s lapsed already",
                        (long long)d->rev, want->room);
        want = NULL;
    }
    bool room_changed = (want != NULL) != core->has_meeting ||
                        (want != NULL && strcmp(want->room, core->meeting.room) != 0);
    core->applied_rev = d->rev;
    core->error[0] = '\0';
    fleet_core_logf(core, FLEET_LOG_INFO, TAG, "desired rev %lld from %s applied: meeting %s",
                    (long long)d->rev, source_name(core, best), want != NULL ? want->room : "none");
    fleet_participant_set_intent(core, want);
    if (room_changed) {
        fleet_intercom_meeting_changed(core);
    }
    fleet_core_publish_state(core);
}

void fleet_reconciler_on_desired(fleet_core_t *core, size_t slot, const char *payload, size_t len)
{
    fleet_source_t *src = &core->sources[slot];
    if (len == 0) {
        /* A retained doc was deleted: the source has no opinion any more. What was applied
         * stays applied (a newer rev elsewhere is the way to change it). */
        src->has_doc = false;
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "desired from %s cleared",
                        source_name(core, slot));
        return;
    }
    fleet_perr_t err;
    fleet_desired_t doc;
    fleet_err_t rc = fleet_desired_decode(payload, len, &doc, &err);
    if (rc != FLEET_OK) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "desired from %s refused: %s",
                        source_name(core, slot), err.msg);
        return;
    }
    if (doc.has_dnd) {
        if (slot == FLEET_SRC_OWN) {
            /* dnd follows the own doc whichever doc's rev wins the meeting (protocol.md 14). */
            fleet_intercom_set_dnd(core, doc.dnd);
        } else {
            fleet_core_logf(core, FLEET_LOG_INFO, TAG, "dnd in the doc of %s ignored: own doc only",
                            source_name(core, slot));
        }
    }
    src->doc = doc;
    src->has_doc = true;
    if (doc.rev <= core->applied_rev) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG,
                        "desired rev %lld from %s kept, not applied (applied rev %lld)",
                        (long long)doc.rev, source_name(core, slot), (long long)core->applied_rev);
        return;
    }
    reconcile(core);
}

void fleet_reconciler_expire(fleet_core_t *core)
{
    if (core->has_meeting && intent_lapsed(core, &core->meeting)) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting %s lapsed (until passed)",
                        core->meeting.room);
        fleet_participant_set_intent(core, NULL);
        fleet_intercom_meeting_changed(core);
        fleet_core_publish_state(core);
    }
}
