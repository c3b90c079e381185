/*
 * fleet_intercom.c - the device's side of announcements and calls (protocol.md 14):
 *  - the `announce` command and its chunks on dev/{id}/ann: accepted when chunk 0 starts
 *    playing, ok with {"played_ms":N} once the last frame has played, failed "no audio" when
 *    no chunk came within 2 s, "interrupted by <ann>" when an urgent one cut it off;
 *  - the `ring` command: the port's ring tone for `seconds` (0 = stop), stopped as well when
 *    the applied meeting changes;
 *  - do-not-disturb from the device's own desired doc, reported in state;
 *  - the call button: answer a ring, hang up a call room, or call the configured target,
 *    as an ApiRequest on api/by/{id}/{op}.
 * The audio itself is the port's (fleet_player_t); the core only queues frames and watches
 * the player's progress from fleet_core_tick().
 */
#include "fleet_core_internal.h"

#include <stdio.h>
#include <string.h>

#include "fleet_valid.h" /* fleet_copy_str */

static const char *const TAG = "fleet_intercom";

#define FRAME_MS 20u

static const fleet_player_t *player(fleet_core_t *core)
{
    const fleet_player_t *p = core->port->player;
    return p != NULL && p->ann_frame != NULL && p->ann_flush != NULL && p->ann_progress != NULL
               ? p
               : NULL;
}

static void ann_clear(fleet_core_t *core)
{
    memset(&core->ann, 0, sizeof core->ann);
}

/* Ends the announcement playing with its final ack; the player's queue is dropped. */
static void ann_finish_failed(fleet_core_t *core, const char *detail)
{
    const fleet_player_t *p = player(core);
    if (p != NULL) {
        p->ann_flush(p->ctx);
    }
    fleet_core_logf(core, FLEET_LOG_WARN, TAG, "announcement %s ends: %s", core->ann.ann, detail);
    fleet_cmd_answer(core, core->ann.cmd, false, FLEET_ACK_FAILED, detail, true, NULL);
    ann_clear(core);
}

/* ---- commands ---------------------------------------------------------------------------- */

static bool read_int_arg(const fleet_json_doc_t *doc, const cJSON *args, const char *key,
                         bool required, long lo, long hi, long *out)
{
    const cJSON *v = fleet_json_get(args, key);
    if (v == NULL || cJSON_IsNull(v)) {
        return !required;
    }
    if (!cJSON_IsNumber(v) || !fleet_json_is_int_literal(doc, v) || v->valuedouble < (double)lo ||
        v->valuedouble > (double)hi) {
        return false;
    }
    *out = (long)v->valuedouble;
    return true;
}

void fleet_intercom_announce(fleet_core_t *core, const fleet_json_doc_t *doc,
                             const fleet_cmd_t *cmd)
{
    if (core->ann.phase == FLEET_ANN_WAITING && strcmp(cmd->id, core->ann.cmd) == 0) {
        /* Redelivered before its first ack (nothing remembered yet): it is running. */
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "announce %.64s again: already waiting",
                        cmd->id);
        return;
    }
    const cJSON *ann = fleet_json_get(cmd->args, "ann");
    if (ann == NULL || !cJSON_IsString(ann) || !fleet_ann_id_valid(ann->valuestring)) {
        fleet_cmd_answer(core, cmd->id, false, FLEET_ACK_BAD_ARGS,
                         "args.ann: required, [A-Za-z0-9_-]{1,64}", true, NULL);
        return;
    }
    const cJSON *prio = fleet_json_get(cmd->args, "priority");
    bool urgent = false;
    if (prio != NULL && !cJSON_IsNull(prio)) {
        if (!cJSON_IsString(prio) || (strcmp(prio->valuestring, "normal") != 0 &&
                                      strcmp(prio->valuestring, "urgent") != 0)) {
            fleet_cmd_answer(core, cmd->id, false, FLEET_ACK_BAD_ARGS,
                             "args.priority: 'normal' or 'urgent'", true, NULL);
            return;
        }
        urgent = strcmp(prio->valuestring, "urgent") == 0;
    }
    long duration = 0;
    if (!read_int_arg(doc, cmd->args, "duration_ms", false, 1, FLEET_ANN_MAX_MS, &duration)) {
        fleet_cmd_answer(core, cmd->id, false, FLEET_ACK_BAD_ARGS,
                         "args.duration_ms: an integer 1-600000", true, NULL);
        return;
    }
    const fleet_player_t *p = player(core);
    if (p == NULL) {
        fleet_cmd_answer(core, cmd->id, false, FLEET_ACK_FAILED, "no speaker", true, NULL);
        return;
    }
    if (core->ann.phase != FLEET_ANN_IDLE) {
        if (!urgent) {
            /* Normal announcements queue at the controller, behind the one playing. */
            char detail[FLEET_DETAIL_BYTES];
            (void)snprintf(detail, sizeof detail, "busy: %s is playing", core->ann.ann);
            fleet_cmd_answer(core, cmd->id, false, FLEET_ACK_FAILED, detail, true, NULL);
            return;
        }
        char detail[FLEET_DETAIL_BYTES];
        (void)snprintf(detail, sizeof detail, "interrupted by %s", ann->valuestring);
        ann_finish_failed(core, detail);
    }
    p->ann_flush(p->ctx);
    (void)fleet_copy_str(core->ann.ann, sizeof core->ann.ann, ann->valuestring);
    (void)fleet_copy_str(core->ann.cmd, sizeof core->ann.cmd, cmd->id);
    core->ann.urgent = urgent;
    core->ann.phase = FLEET_ANN_WAITING;
    core->ann.since_ms = fleet_core_now_ms(core);
    fleet_core_logf(core, FLEET_LOG_INFO, TAG, "announcement %s (%s, %ld ms): waiting for audio",
                    core->ann.ann, urgent ? "urgent" : "normal", duration);
}

/* on: (re)starts the pattern from its top for `seconds`; off: silence. */
static void ring_set(fleet_core_t *core, bool on, uint32_t seconds)
{
    const fleet_player_t *p = core->port->player;
    if (on) {
        core->ring_until_ms = fleet_core_now_ms(core) + (uint64_t)seconds * 1000u;
    }
    if (on || core->ringing) {
        if (p != NULL && p->ring != NULL) {
            p->ring(p->ctx, on);
        }
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, on ? "ring on for %lu s (call %s)" : "ring off",
                        (unsigned long)seconds, core->ring_call);
    }
    core->ringing = on;
    if (!on) {
        core->ring_call[0] = '\0';
    }
}

void fleet_intercom_ring(fleet_core_t *core, const fleet_json_doc_t *doc, const fleet_cmd_t *cmd)
{
    const cJSON *call = fleet_json_get(cmd->args, "call");
    long seconds = 0;
    bool has_call = call != NULL && !cJSON_IsNull(call);
    if (has_call && (!cJSON_IsString(call) || call->valuestring[0] == '\0' ||
                     fleet_utf8_len(call->valuestring) > FLEET_ROOM_MAX)) {
        fleet_cmd_answer(core, cmd->id, false, FLEET_ACK_BAD_ARGS,
                         "args.call: a call id of 1-64 characters", true, NULL);
        return;
    }
    if (!read_int_arg(doc, cmd->args, "seconds", true, 0, FLEET_RING_MAX_S, &seconds)) {
        fleet_cmd_answer(core, cmd->id, false, FLEET_ACK_BAD_ARGS,
                         "args.seconds: required, an integer 0-120", true, NULL);
        return;
    }
    if (seconds > 0) {
        fleet_copy_text(core->ring_call, sizeof core->ring_call, has_call ? call->valuestring : "",
                        FLEET_ROOM_MAX);
    }
    ring_set(core, seconds > 0, (uint32_t)seconds);
    fleet_cmd_answer(core, cmd->id, true, FLEET_ACK_OK, "", true, NULL);
}

/* ---- chunks ------------------------------------------------------------------------------ */

void fleet_intercom_on_chunk(fleet_core_t *core, const char *payload, size_t len)
{
    fleet_json_doc_t doc;
    fleet_perr_t err;
    fleet_ann_chunk_t chunk;
    fleet_err_t rc = fleet_json_parse(&doc, payload, len, &err);
    if (rc == FLEET_OK) {
        rc = fleet_ann_chunk_parse(&doc, &chunk, &err);
    }
    if (rc != FLEET_OK) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "announcement chunk refused: %s", err.msg);
        fleet_json_free(&doc);
        return;
    }
    const fleet_player_t *p = player(core);
    if (core->ann.phase == FLEET_ANN_IDLE || strcmp(chunk.ann, core->ann.ann) != 0 || p == NULL) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "chunk %lld of %s ignored: not the one playing",
                        (long long)chunk.seq, chunk.ann);
        fleet_json_free(&doc);
        return;
    }
    if (chunk.seq < core->ann.next_seq || core->ann.phase == FLEET_ANN_DRAINING) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "chunk %lld of %s ignored: seen already",
                        (long long)chunk.seq, chunk.ann);
        fleet_json_free(&doc);
        return;
    }
    if (chunk.seq > core->ann.next_seq) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "announcement %s: chunks %lld-%lld missing",
                        chunk.ann, (long long)core->ann.next_seq, (long long)chunk.seq - 1);
    }
    uint32_t dropped = 0;
    for (const cJSON *it = chunk.frames->child; it != NULL; it = it->next) {
        long n = fleet_b64_decode(it->valuestring, core->frame, sizeof core->frame);
        if (n <= 0 || !p->ann_frame(p->ctx, chunk.codec, core->frame, (size_t)n)) {
            dropped++;
        }
    }
    if (dropped > 0) {
        core->ann.dropped += dropped;
        fleet_core_logf(core, FLEET_LOG_WARN, TAG,
                        "announcement %s: %lu frames dropped (buffer full)", chunk.ann,
                        (unsigned long)dropped);
    }
    core->ann.next_seq = chunk.seq + 1;
    core->ann.since_ms = fleet_core_now_ms(core);
    if (core->ann.phase == FLEET_ANN_WAITING) {
        core->ann.phase = FLEET_ANN_PLAYING;
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "announcement %s playing", core->ann.ann);
        fleet_cmd_answer(core, core->ann.cmd, true, FLEET_ACK_ACCEPTED, "playing", false, NULL);
    }
    if (chunk.last) {
        core->ann.phase = FLEET_ANN_DRAINING;
    }
    fleet_json_free(&doc);
}

/* ---- timers ------------------------------------------------------------------------------ */

uint32_t fleet_intercom_tick(fleet_core_t *core)
{
    uint64_t now = fleet_core_now_ms(core);
    uint32_t wait = 1000;
    if (core->ringing) {
        if (now >= core->ring_until_ms) {
            ring_set(core, false, 0);
        } else if (core->ring_until_ms - now < wait) {
            wait = (uint32_t)(core->ring_until_ms - now);
        }
    }
    const fleet_player_t *p = player(core);
    if (core->ann.phase == FLEET_ANN_IDLE || p == NULL) {
        return wait;
    }
    if (core->ann.phase == FLEET_ANN_WAITING) {
        if (now - core->ann.since_ms >= FLEET_ANN_NO_AUDIO_MS) {
            ann_finish_failed(core, "no audio");
        }
        return FRAME_MS;
    }
    uint32_t queued = 0, played = 0;
    p->ann_progress(p->ctx, &queued, &played);
    if (queued > 0) {
        return FRAME_MS;
    }
    if (core->ann.phase == FLEET_ANN_DRAINING) {
        (void)snprintf(core->result, sizeof core->result, "{\"played_ms\":%lu}",
                       (unsigned long)played * FRAME_MS);
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "announcement %s played: %lu ms", core->ann.ann,
                        (unsigned long)played * FRAME_MS);
        fleet_cmd_answer(core, core->ann.cmd, true, FLEET_ACK_OK, "", true, core->result);
        ann_clear(core);
        p->ann_flush(p->ctx);
    } else if (now - core->ann.since_ms >= FLEET_ANN_STALL_MS) {
        char detail[FLEET_DETAIL_BYTES];
        (void)snprintf(detail, sizeof detail, "audio stopped after %lu ms",
                       (unsigned long)played * FRAME_MS);
        ann_finish_failed(core, detail);
    }
    return FRAME_MS;
}

void fleet_intercom_meeting_changed(fleet_core_t *core)
{
    if (core->ringing) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "the desired meeting changed: ring stops");
        ring_set(core, false, 0);
    }
}

void fleet_intercom_set_dnd(fleet_core_t *core, bool dnd)
{
    if (core->dnd == dnd) {
        return;
    }
    core->dnd = dnd;
    fleet_core_logf(core, FLEET_LOG_INFO, TAG, "do-not-disturb %s", dnd ? "on" : "off");
    fleet_core_publish_state(core);
}

/* ---- the button -------------------------------------------------------------------------- */

static void api_request(fleet_core_t *core, const char *op, const char *to, const char *group)
{
    char topic[FLEET_TOPIC_MAX + FLEET_API_OP_MAX];
    char id[FLEET_CMD_ID_CHARS + 1];
    if (!fleet_topic_api_by(topic, sizeof topic, core->prefix, core->id, op)) {
        return;
    }
    core->api_seq++;
    (void)snprintf(id, sizeof id, "btn-%llu-%lu", (unsigned long long)fleet_core_now_ms(core),
                   (unsigned long)core->api_seq);
    fleet_api_req_t req = {.id = id, .device = core->id, .to = to, .group = group};
    size_t n = fleet_api_req_encode(&req, core->out, sizeof core->out);
    if (n > 0 && fleet_core_publish(core, topic, core->out, n, 1, false)) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "button: %s requested (%s)", op, id);
    }
}

void fleet_core_button(fleet_core_t *core, fleet_button_t event)
{
    if (event != FLEET_BUTTON_SHORT) {
        return;
    }
    if (!core->connected) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "button: not connected, press ignored");
        return;
    }
    if (core->ringing) {
        ring_set(core, false, 0);
        api_request(core, "answer", NULL, NULL);
    } else if (core->has_meeting && strncmp(core->meeting.room, "call-", 5) == 0) {
        api_request(core, "hangup", NULL, NULL);
    } else if (core->call_to[0] == '\0') {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "button: no call target configured (call_to)");
    } else if (strncmp(core->call_to, "group:", 6) == 0) {
        api_request(core, "call", NULL, core->call_to + 6);
    } else {
        api_request(core, "call", core->call_to, NULL);
    }
}
