/*
 * fake_port.h - a fleet_port_t that records what the core does, with a hand-driven clock.
 */
#ifndef FLEET_FAKE_PORT_H
#define FLEET_FAKE_PORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fleet_port.h"

#define FP_MAX_PUB 256
#define FP_MAX_SUB 64

typedef struct {
    char *topic;
    char *payload;
    size_t len;
    int qos;
    bool retain;
} fp_pub_t;

typedef struct {
    fleet_port_t port;
    uint64_t now_ms;
    bool clock_set;
    double unix_now;
    fp_pub_t pubs[FP_MAX_PUB];
    size_t n_pubs;
    char *subs[FP_MAX_SUB]; /* current subscriptions */
    size_t n_subs;
    size_t n_unsubs;
    int reboots;
    uint32_t identify_s;
    int identifies;
    int logs;
    int saved_groups;
    char pending[300]; /* what save_pending stored ("" = cleared) */
    int pending_saves;
    bool refuse_publish;
} fake_port_t;

void fp_init(fake_port_t *fp);
void fp_free(fake_port_t *fp);
/* Forget recorded publishes. */
void fp_clear(fake_port_t *fp);
/* Last publish whose topic ends with suffix ("/state"), or NULL. */
const fp_pub_t *fp_last(const fake_port_t *fp, const char *suffix);
/* Number of publishes whose topic ends with suffix. */
size_t fp_count(const fake_port_t *fp, const char *suffix);
bool fp_subscribed(const fake_port_t *fp, const char *topic);

#endif
