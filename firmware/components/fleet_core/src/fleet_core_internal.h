/*
 * fleet_core_internal.h - what fleet_core.c and fleet_cmd.c share. Not installed.
 */
#ifndef FLEET_CORE_INTERNAL_H
#define FLEET_CORE_INTERNAL_H

#include "fleet_core.h"

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

/* fleet_cmd.c */
void fleet_cmd_handle(fleet_core_t *core, const char *payload, size_t len);
/* After a connect: the final ack of the reboot command that restarted us, if any. */
void fleet_cmd_confirm_pending(fleet_core_t *core);

/* Copies src into dst (cap bytes), cut at a UTF-8 boundary to at most max_cp code points. */
void fleet_copy_text(char *dst, size_t cap, const char *src, size_t max_cp);

#endif /* FLEET_CORE_INTERNAL_H */
