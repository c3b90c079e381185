/*
 * fleet_core_internal.h - what the files of the core share. Not installed.
 */
#ifndef FLEET_CORE_INTERNAL_H
#define FLEET_CORE_INTERNAL_H

#include "fleet_core.h"

/* The log tag of every file of the core but fleet_cmd.c (defined in fleet_core.c). */
extern const char fleet_core_tag[];

void fleet_core_logf(fleet_core_t *core, fleet_log_level_t level, const char *tag, const char *fmt,
                     ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

bool fleet_core_publish(fleet_core_t *core, const char *topic, const char *payload, size_t len,
                        int qos, bool retain);
void fleet_core_publish_state(fleet_core_t *core);
void fleet_core_publish_birth(fleet_core_t *core);

/* Wall clock in seconds if it is set. */
bool fleet_core_unix_now(fleet_core_t *core, double *now);
uint64_t fleet_core_now_ms(fleet_core_t *core);

/* Replaces the group list: unsubscribes dropped groups, subscribes new ones, forgets
 * dropped groups' desired docs, persists and republishes the birth. Groups are valid ids. */
void fleet_core_replace_groups(fleet_core_t *core, const char (*groups)[FLEET_ID_MAX + 1],
                               size_t n);

/* Desired-state sources in core->sources: own, grp/all, then one per group. */
#define FLEET_SRC_OWN    0
#define FLEET_SRC_ALL    1
#define FLEET_SRC_GROUP0 2

/* fleet_reconciler.c */
/* A desired doc (empty payload = the retained doc was deleted) on the source `slot`. */
void fleet_reconciler_on_desired(fleet_core_t *core, size_t slot, const char *payload, size_t len);
/* The applied meeting lapses once its meeting.until has passed. */
void fleet_reconciler_expire(fleet_core_t *core);

/* fleet_participant.c */
/* Moves from the current meeting intent to `want` (NULL = no meeting). */
void fleet_participant_set_intent(fleet_core_t *core, const fleet_intent_t *want);
/* (Re)joins the intent's room: forgets the session, sends join if connected. */
void fleet_participant_join(fleet_core_t *core);
/* Leaves: forgets the session, sends leave if connected (if not, only forgets). */
void fleet_participant_leave(fleet_core_t *core);
/* A message on dev/{id}/meet/down. */
void fleet_participant_on_down(fleet_core_t *core, const char *payload, size_t len);

/* fleet_cmd.c */
void fleet_cmd_handle(fleet_core_t *core, const char *payload, size_t len);
/* After a connect: the final ack of the reboot command that restarted us, if any. */
void fleet_cmd_confirm_pending(fleet_core_t *core);
/* Sends an ack and remembers it for the id (fleet_cmd.c). result: encoded JSON or NULL. */
void fleet_cmd_answer(fleet_core_t *core, const char *id, bool ok, fleet_ack_code_t code,
                      const char *detail, bool done, const char *result);

/* fleet_intercom.c: announcements, ring, do-not-disturb, the call button */
void fleet_intercom_announce(fleet_core_t *core, const fleet_json_doc_t *doc,
                             const fleet_cmd_t *cmd);
void fleet_intercom_ring(fleet_core_t *core, const fleet_json_doc_t *doc, const fleet_cmd_t *cmd);
/* A message on dev/{id}/ann. */
void fleet_intercom_on_chunk(fleet_core_t *core, const char *payload, size_t len);
/* Timers: no audio, the end of play, the ring's end. Returns ms until it wants to run. */
uint32_t fleet_intercom_tick(fleet_core_t *core);
/* The applied meeting intent changed room (or to none, or from none): the ring stops. */
void fleet_intercom_meeting_changed(fleet_core_t *core);
/* The own desired doc said dnd (true/false). */
void fleet_intercom_set_dnd(fleet_core_t *core, bool dnd);

/* Copies src into dst (cap bytes), cut at a UTF-8 boundary to at most max_cp code points. */
void fleet_copy_text(char *dst, size_t cap, const char *src, size_t max_cp);

#endif /* FLEET_CORE_INTERNAL_H */
