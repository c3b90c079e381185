/*
 * fleet_msg_parts.h - the schema pieces both directions of the protocol share: the
 * Capabilities object, a trickled candidate, the signalling type tags, and the writers of
 * optional members. Not installed.
 */
#ifndef FLEET_MSG_PARTS_H
#define FLEET_MSG_PARTS_H

#include "fleet_msg.h"
#include "fleet_valid.h"

/* The "type" tags of MeetUp and MeetDown, in the order of their enums. */
extern const char *const fleet_up_tags[FLEET_UP_CANDIDATE + 1];
extern const char *const fleet_down_tags[FLEET_DOWN_CANDIDATE + 1];
#define N_UP_TAGS   (sizeof fleet_up_tags / sizeof fleet_up_tags[0])
#define N_DOWN_TAGS (sizeof fleet_down_tags / sizeof fleet_down_tags[0])

/* An optional Capabilities member named "caps"; inner labels its members. */
bool fleet_read_caps(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *inner,
                     bool *has, fleet_caps_t *out);
/* A trickled candidate's value (null = end of candidates) and its media section. */
bool fleet_read_candidate(fleet_reader_t *c, const cJSON *root, const char **cand,
                          const char **mid);

/* Writers: a member left out when it is null (messages.encode does the same). */
void fleet_write_opt_str(fleet_jw_t *w, const char *key, const char *v);
void fleet_write_opt_num(fleet_jw_t *w, const char *key, bool has, double v);
void fleet_write_opt_int(fleet_jw_t *w, const char *key, bool has, long long v);
void fleet_write_caps(fleet_jw_t *w, const fleet_caps_t *caps);
void fleet_write_candidate(fleet_jw_t *w, const char *cand, const char *mid);
/* A cJSON value re-encoded (args, result, peers views); depth is bounded by the writer. */
void fleet_write_cjson(fleet_jw_t *w, const cJSON *v);

#endif /* FLEET_MSG_PARTS_H */
