/*
 * fleet_topics.h - the fleet's MQTT namespace (mirror of fleet/protocol/topics.py).
 *
 *   {prefix}/dev/{id}/{status|desired|state|cmd|ack|tele|ann}
 *   {prefix}/grp/{group}/desired
 *   {prefix}/meet/{pid}/{up|down}
 *   {prefix}/api/{op}   {prefix}/api/result   {prefix}/api/by/{user}/{op}
 */
#ifndef FLEET_TOPICS_H
#define FLEET_TOPICS_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLEET_DEFAULT_PREFIX "fleet/v1"
#define FLEET_ID_MAX         64  /* [a-z0-9][a-z0-9-]{0,63} */
#define FLEET_PREFIX_MAX     128 /* bytes; a device-side bound, topics.py has none */
#define FLEET_API_OP_MAX     32
/* Longest topic this module builds: prefix + "/meet/" + id + "/desired" and change. */
#define FLEET_TOPIC_MAX (FLEET_PREFIX_MAX + FLEET_ID_MAX + 16)

typedef enum {
    FLEET_TOPIC_STATUS = 0,
    FLEET_TOPIC_DESIRED,
    FLEET_TOPIC_STATE,
    FLEET_TOPIC_CMD,
    FLEET_TOPIC_ACK,
    FLEET_TOPIC_TELE,
    FLEET_TOPIC_GROUP_DESIRED,
    FLEET_TOPIC_MEET_UP,
    FLEET_TOPIC_MEET_DOWN,
    FLEET_TOPIC_API,
    FLEET_TOPIC_API_RESULT,
    FLEET_TOPIC_ANNOUNCE, /* dev/{id}/ann: announcement audio (protocol.md 14) */
} fleet_topic_kind_t;

typedef struct {
    fleet_topic_kind_t kind;
    /* device id, group, participant peer id or API op, depending on kind */
    char name[FLEET_ID_MAX + 1];
} fleet_topic_t;

/* [a-z0-9][a-z0-9-]{0,63}, the whole string. */
bool fleet_id_valid(const char *s);
/* Same pattern over n bytes (for topic levels that are not NUL-terminated). */
bool fleet_id_valid_n(const char *s, size_t n);
/* [a-z0-9][a-z0-9._-]{0,63} (messages.py RoomName). */
bool fleet_room_valid(const char *s);

/*
 * Normalise a prefix as topics.py does: strip leading and trailing '/', then require
 * plain levels of [A-Za-z0-9_.-]. Writes the result to out (cap bytes).
 */
bool fleet_prefix_normalize(const char *in, char *out, size_t cap);

/* Device topic for kind in {STATUS..TELE, ANNOUNCE}; false if the id or the buffer is bad. */
bool fleet_topic_device(char *out, size_t cap, const char *prefix, fleet_topic_kind_t kind,
                        const char *device_id);
bool fleet_topic_group_desired(char *out, size_t cap, const char *prefix, const char *group);
bool fleet_topic_meet(char *out, size_t cap, const char *prefix, const char *pid, bool up);
/* api/by/{user}/{op}: a request the device itself makes (its button). */
bool fleet_topic_api_by(char *out, size_t cap, const char *prefix, const char *user,
                        const char *op);

/* Classify a topic (len bytes, need not be NUL-terminated). False if outside the namespace. */
bool fleet_topic_parse(const char *prefix, const char *topic, size_t len, fleet_topic_t *out);

const char *fleet_topic_kind_name(fleet_topic_kind_t kind);

#ifdef __cplusplus
}
#endif

#endif /* FLEET_TOPICS_H */
