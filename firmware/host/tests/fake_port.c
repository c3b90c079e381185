/*
 * fake_port.c - the recording port used by the unit tests.
 */
#include "fake_port.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static uint64_t fp_now_ms(void *ctx)
{
    return ((fake_port_t *)ctx)->now_ms;
}

static bool fp_clock_is_set(void *ctx)
{
    return ((fake_port_t *)ctx)->clock_set;
}

static double fp_unix_time(void *ctx)
{
    return ((fake_port_t *)ctx)->unix_now;
}

static bool fp_publish(void *ctx, const char *topic, const char *payload, size_t len, int qos,
                       bool retain)
{
    fake_port_t *fp = ctx;
    if (fp->refuse_publish || fp->n_pubs >= FP_MAX_PUB) {
        return false;
    }
    fp_pub_t *p = &fp->pubs[fp->n_pubs++];
    p->topic = dup_n(topic, strlen(topic));
    p->payload = dup_n(payload, len);
    p->len = len;
    p->qos = qos;
    p->retain = retain;
    return true;
}

static bool fp_subscribe(void *ctx, const char *topic, int qos)
{
    fake_port_t *fp = ctx;
    (void)qos;
    if (fp_subscribed(fp, topic)) {
        return true;
    }
    if (fp->n_subs >= FP_MAX_SUB) {
        return false;
    }
    fp->subs[fp->n_subs++] = dup_n(topic, strlen(topic));
    return true;
}

static bool fp_unsubscribe(void *ctx, const char *topic)
{
    fake_port_t *fp = ctx;
    fp->n_unsubs++;
    for (size_t i = 0; i < fp->n_subs; i++) {
        if (strcmp(fp->subs[i], topic) == 0) {
            free(fp->subs[i]);
            fp->subs[i] = fp->subs[--fp->n_subs];
            return true;
        }
    }
    return true;
}

static void fp_reboot(void *ctx)
{
    ((fake_port_t *)ctx)->reboots++;
}

static void fp_identify(void *ctx, uint32_t seconds)
{
    fake_port_t *fp = ctx;
    fp->identifies++;
    fp->identify_s = seconds;
}

static void fp_log(void *ctx, fleet_log_level_t level, const char *tag, const char *msg)
{
    fake_port_t *fp = ctx;
    fp->logs++;
    if (getenv("FLEET_TEST_VERBOSE") != NULL) {
        fprintf(stderr, "    [%d] %s: %s\n", (int)level, tag, msg);
    }
}

static void fp_sample(void *ctx, fleet_sys_sample_t *out)
{
    (void)ctx;
    out->has_rssi = true;
    out->rssi = -51;
    out->has_heap = true;
    out->heap_free = 120000;
    out->heap_min = 90000;
    out->wifi_reconnects = 2;
    out->mqtt_reconnects = 1;
}

static bool fp_save_groups(void *ctx, const char *const *groups, size_t count)
{
    (void)groups;
    (void)count;
    ((fake_port_t *)ctx)->saved_groups++;
    return true;
}

static bool fp_save_pending(void *ctx, const char *id)
{
    fake_port_t *fp = ctx;
    fp->pending_saves++;
    snprintf(fp->pending, sizeof fp->pending, "%s", id != NULL ? id : "");
    return true;
}

void fp_init(fake_port_t *fp)
{
    memset(fp, 0, sizeof *fp);
    fp->now_ms = 1000;
    fp->clock_set = true;
    fp->unix_now = 1700000000.0;
    fp->port.ctx = fp;
    fp->port.now_ms = fp_now_ms;
    fp->port.clock_is_set = fp_clock_is_set;
    fp->port.unix_time = fp_unix_time;
    fp->port.publish = fp_publish;
    fp->port.subscribe = fp_subscribe;
    fp->port.unsubscribe = fp_unsubscribe;
    fp->port.reboot = fp_reboot;
    fp->port.identify = fp_identify;
    fp->port.log = fp_log;
    fp->port.sample = fp_sample;
    fp->port.save_groups = fp_save_groups;
    fp->port.save_pending = fp_save_pending;
}

void fp_clear(fake_port_t *fp)
{
    for (size_t i = 0; i < fp->n_pubs; i++) {
        free(fp->pubs[i].topic);
        free(fp->pubs[i].payload);
    }
    fp->n_pubs = 0;
}

void fp_free(fake_port_t *fp)
{
    fp_clear(fp);
    for (size_t i = 0; i < fp->n_subs; i++) {
        free(fp->subs[i]);
    }
    fp->n_subs = 0;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

const fp_pub_t *fp_last(const fake_port_t *fp, const char *suffix)
{
    for (size_t i = fp->n_pubs; i > 0; i--) {
        if (ends_with(fp->pubs[i - 1].topic, suffix)) {
            return &fp->pubs[i - 1];
        }
    }
    return NULL;
}

size_t fp_count(const fake_port_t *fp, const char *suffix)
{
    size_t n = 0;
    for (size_t i = 0; i < fp->n_pubs; i++) {
        n += ends_with(fp->pubs[i].topic, suffix);
    }
    return n;
}

bool fp_subscribed(const fake_port_t *fp, const char *topic)
{
    for (size_t i = 0; i < fp->n_subs; i++) {
        if (strcmp(fp->subs[i], topic) == 0) {
            return true;
        }
    }
    return false;
}
