/*
 * fleet_cmd.c - imperative commands on dev/{id}/cmd and their acks on dev/{id}/ack.
 *
 * Order of checks (protocol.md 6.2): parse (bad_request, remembered for a salvaged id)
 * -> seen id (resend the remembered ack, run nothing) -> expiry (expired) -> op (unknown_op) ->
 * args (bad_args) -> run.
 *
 * Remembered acks: the last ack sent for each of the last FLEET_CMD_RING ids, kept
 * byte for byte so a redelivered command gets exactly the same answer. Ids and acks
 * share one arena written round-robin; an entry whose bytes get overwritten is
 * forgotten early (only when acks are unusually large).
 */
#include "fleet_core_internal.h"

#include <stdio.h>
#include <string.h>

static const char *TAG = "fleet_cmd";

static uint32_t fnv1a(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static fleet_ack_memo_t *memo_find(fleet_core_t *core, const char *id)
{
    size_t n = strlen(id);
    uint32_t h = fnv1a(id, n);
    for (size_t i = 0; i < FLEET_CMD_RING; i++) {
        fleet_ack_memo_t *m = &core->memo[i];
        if (m->used && m->hash == h && m->id_len == n && memcmp(core->arena + m->off, id, n) == 0) {
            return m;
        }
    }
    return NULL;
}

static void memo_store(fleet_core_t *core, const char *id, const char *ack, size_t ack_len)
{
    size_t id_len = strlen(id);
    size_t need = id_len + ack_len;
    fleet_ack_memo_t *old = memo_find(core, id);
    if (old != NULL) {
        old->used = false; /* the latest ack for an id replaces the earlier one */
    }
    if (need > FLEET_ACK_ARENA) {
        return; /* cannot happen with FLEET_OUT_MAX acks, but never write past the arena */
    }
    if (core->arena_pos + need > FLEET_ACK_ARENA) {
        core->arena_pos = 0;
    }
    size_t lo = core->arena_pos, hi = core->arena_pos + need;
    for (size_t i = 0; i < FLEET_CMD_RING; i++) {
        fleet_ack_memo_t *m = &core->memo[i];
        if (m->used && m->off < hi && lo < (size_t)m->off + m->id_len + m->ack_len) {
            m->used = false; /* its bytes are about to be overwritten */
        }
    }
    fleet_ack_memo_t *m = &core->memo[core->memo_next];
    core->memo_next = (core->memo_next + 1) % FLEET_CMD_RING;
    memcpy(core->arena + lo, id, id_len);
    memcpy(core->arena + lo + id_len, ack, ack_len);
    m->used = true;
    m->hash = fnv1a(id, id_len);
    m->off = (uint16_t)lo;
    m->id_len = (uint16_t)id_len;
    m->ack_len = (uint16_t)ack_len;
    core->arena_pos = hi;
}

/* Sends an ack and, unless the id is unknown ("?"), remembers it for that id. */
void fleet_cmd_answer(fleet_core_t *core, const char *id, bool ok, fleet_ack_code_t code,
                      const char *detail, bool done, const char *result)
{
    fleet_ack_t msg;
    memset(&msg, 0, sizeof msg);
    msg.id = id;
    msg.ok = ok;
    msg.code = code;
    msg.detail = detail;
    msg.done = done;
    msg.result_json = result;
    size_t n = fleet_ack_encode(&msg, core->out, sizeof core->out);
    if (n == 0) {
        fleet_core_logf(core, FLEET_LOG_ERROR, TAG, "ack for %.64s does not fit", id);
        return;
    }
    (void)fleet_core_publish(core, core->t_ack, core->out, n, 1, false);
    fleet_core_logf(core, FLEET_LOG_INFO, TAG, "ack %.64s: %s%s%.120s", id,
                    fleet_ack_code_name(code), detail[0] != '\0' ? " - " : "", detail);
    if (strcmp(id, "?") != 0) {
        memo_store(core, id, core->out, n);
    }
}

static void resend(fleet_core_t *core, const char *id, const fleet_ack_memo_t *m)
{
    fleet_core_logf(core, FLEET_LOG_INFO, TAG, "command %.64s seen before: same ack, not run again",
                    id);
    (void)fleet_core_publish(core, core->t_ack, core->arena + m->off + m->id_len, m->ack_len, 1,
                             false);
}

static void reject(fleet_core_t *core, const char *id, fleet_ack_code_t code, const char *detail)
{
    fleet_cmd_answer(core, id, false, code, detail, true, NULL);
}

/* ---- ops --------------------------------------------------------------------------------- */

static void op_ping(fleet_core_t *core, const fleet_cmd_t *cmd)
{
    double up = (double)fleet_core_now_ms(core) / 1000.0;
    (void)snprintf(core->result, sizeof core->result, "{\"uptime_s\":%.3f}", up);
    fleet_cmd_answer(core, cmd->id, true, FLEET_ACK_OK, "", true, core->result);
}

static void op_identify(fleet_core_t *core, const fleet_json_doc_t *doc, const fleet_cmd_t *cmd)
{
    long seconds = FLEET_IDENTIFY_DEFAULT_S;
    const cJSON *v = fleet_json_get(cmd->args, "seconds");
    if (v != NULL && !cJSON_IsNull(v)) {
        if (!cJSON_IsNumber(v) || !fleet_json_is_int_literal(doc, v) || v->valuedouble < 1.0 ||
            v->valuedouble > (double)FLEET_IDENTIFY_MAX_S) {
            reject(core, cmd->id, FLEET_ACK_BAD_ARGS, "args.seconds: an integer 1-300");
            return;
        }
        seconds = (long)v->valuedouble;
    }
    core->port->identify(core->port->ctx, (uint32_t)seconds);
    fleet_cmd_answer(core, cmd->id, true, FLEET_ACK_OK, "", true, NULL);
}

static void op_reboot(fleet_core_t *core, const fleet_cmd_t *cmd)
{
    fleet_cmd_answer(core, cmd->id, true, FLEET_ACK_ACCEPTED, "rebooting", false, NULL);
    /* The final ack ("ok") is sent by the next boot, after it has connected. */
    if (core->port->save_pending != NULL && !core->port->save_pending(core->port->ctx, cmd->id)) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "reboot %.64s: id not saved, no final ack",
                        cmd->id);
    }
    fleet_core_logf(core, FLEET_LOG_WARN, TAG, "reboot requested by command %.64s", cmd->id);
    core->port->reboot(core->port->ctx);
}

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void op_ota(fleet_core_t *core, const fleet_cmd_t *cmd)
{
    const cJSON *url = fleet_json_get(cmd->args, "url");
    if (url == NULL || cJSON_IsNull(url)) {
        reject(core, cmd->id, FLEET_ACK_BAD_ARGS, "args.url: required");
        return;
    }
    if (!cJSON_IsString(url) ||
        !(has_prefix(url->valuestring, "http://") || has_prefix(url->valuestring, "https://"))) {
        reject(core, cmd->id, FLEET_ACK_BAD_ARGS, "args.url: an http:// or https:// URL");
        return;
    }
    if (core->port->ota == NULL) {
        fleet_cmd_answer(core, cmd->id, true, FLEET_ACK_ACCEPTED, "", false, NULL);
        fleet_cmd_answer(core, cmd->id, false, FLEET_ACK_FAILED, "not supported in this build",
                         true, NULL);
        return;
    }
    fleet_cmd_answer(core, cmd->id, true, FLEET_ACK_ACCEPTED, "downloading", false, NULL);
    /* The final ack comes from the new image after its restart, or from
     * fleet_core_ota_failed() while the old one keeps running. */
    if (!core->port->ota(core->port->ctx, cmd->id, url->valuestring)) {
        fleet_cmd_answer(core, cmd->id, false, FLEET_ACK_FAILED,
                         "cannot start: an update is running, or no OTA slot", true, NULL);
    }
}

void fleet_core_ota_failed(fleet_core_t *core, const char *cmd_id, const char *detail)
{
    fleet_core_logf(core, FLEET_LOG_WARN, TAG, "ota %.64s failed: %.120s", cmd_id, detail);
    fleet_cmd_answer(core, cmd_id, false, FLEET_ACK_FAILED, detail, true, NULL);
}

static void op_set_groups(fleet_core_t *core, const fleet_cmd_t *cmd)
{
    char groups[FLEET_MAX_GROUPS][FLEET_ID_MAX + 1];
    size_t n = 0;
    const cJSON *list = fleet_json_get(cmd->args, "groups");
    if (list == NULL || cJSON_IsNull(list)) {
        reject(core, cmd->id, FLEET_ACK_BAD_ARGS, "args.groups: required");
        return;
    }
    if (!cJSON_IsArray(list)) {
        reject(core, cmd->id, FLEET_ACK_BAD_ARGS, "args.groups: a list of group names");
        return;
    }
    if (cJSON_GetArraySize(list) > FLEET_MAX_GROUPS) {
        reject(core, cmd->id, FLEET_ACK_BAD_ARGS, "args.groups: at most 32");
        return;
    }
    for (const cJSON *it = list->child; it != NULL; it = it->next) {
        if (!cJSON_IsString(it) || !fleet_id_valid(it->valuestring)) {
            reject(core, cmd->id, FLEET_ACK_BAD_ARGS,
                   "args.groups: each must match [a-z0-9][a-z0-9-]{0,63}");
            return;
        }
        bool dup = strcmp(it->valuestring, "all") == 0; /* implicit, always subscribed */
        for (size_t j = 0; j < n && !dup; j++) {
            dup = strcmp(groups[j], it->valuestring) == 0;
        }
        if (!dup) {
            size_t len = strlen(it->valuestring); /* <= 64: checked by fleet_id_valid */
            memcpy(groups[n], it->valuestring, len + 1);
            n++;
        }
    }
    fleet_core_replace_groups(core, (const char(*)[FLEET_ID_MAX + 1]) groups, n);

    /* Result: the groups as stored. */
    fleet_jw_t w;
    fleet_jw_init(&w, core->result, sizeof core->result);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "groups");
    fleet_jw_arr_begin(&w);
    for (size_t i = 0; i < core->n_groups; i++) {
        fleet_jw_str(&w, core->groups[i]);
    }
    fleet_jw_arr_end(&w);
    fleet_jw_obj_end(&w);
    fleet_cmd_answer(core, cmd->id, true, FLEET_ACK_OK, "", true,
                     fleet_jw_finish(&w) > 0 ? core->result : NULL);
}

/* ---- entry ------------------------------------------------------------------------------- */

/* True (with a detail) when the command's ts + ttl_ms lies in the past of a set clock. */
static bool expired(fleet_core_t *core, const fleet_cmd_t *cmd, char *detail, size_t cap)
{
    double now;
    if (!cmd->has_ts || !fleet_core_unix_now(core, &now)) {
        return false; /* without a clock the device cannot tell: it runs the command */
    }
    double age = now - cmd->ts;
    if (cmd->ts + (double)cmd->ttl_ms / 1000.0 >= now) {
        return false;
    }
    (void)snprintf(detail, cap, "issued %.0f s ago, ttl %.3g s", age, (double)cmd->ttl_ms / 1000.0);
    return true;
}

void fleet_cmd_handle(fleet_core_t *core, const char *payload, size_t len)
{
    fleet_json_doc_t doc;
    fleet_perr_t err;
    fleet_cmd_t cmd;
    char detail[FLEET_DETAIL_BYTES];
    fleet_err_t rc = fleet_json_parse(&doc, payload, len, &err);
    if (rc == FLEET_OK) {
        rc = fleet_cmd_parse(&doc, &cmd, &err);
    }
    if (rc != FLEET_OK) {
        char id[FLEET_UTF8_BYTES(FLEET_CMD_ID_CHARS)] = "?";
        if (doc.root != NULL) {
            (void)fleet_cmd_salvage_id(&doc, id, sizeof id);
        }
        /* Decoding comes first (protocol.md 6.2 step 1): a payload that does not decode is
         * bad_request even when its id was answered before, and that answer becomes the
         * one remembered for the id. */
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "command refused: %s", err.msg);
        reject(core, id, FLEET_ACK_BAD_REQUEST, err.msg);
        fleet_json_free(&doc);
        return;
    }
    const fleet_ack_memo_t *seen = memo_find(core, cmd.id);
    if (seen != NULL) {
        resend(core, cmd.id, seen);
    } else if (expired(core, &cmd, detail, sizeof detail)) {
        reject(core, cmd.id, FLEET_ACK_EXPIRED, detail);
    } else {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "command %.64s: %s", cmd.id, cmd.op);
        if (strcmp(cmd.op, "ping") == 0) {
            op_ping(core, &cmd);
        } else if (strcmp(cmd.op, "identify") == 0) {
            op_identify(core, &doc, &cmd);
        } else if (strcmp(cmd.op, "reboot") == 0) {
            op_reboot(core, &cmd);
        } else if (strcmp(cmd.op, "ota") == 0) {
            op_ota(core, &cmd);
        } else if (strcmp(cmd.op, "set_groups") == 0) {
            op_set_groups(core, &cmd);
        } else if (strcmp(cmd.op, "announce") == 0) {
            fleet_intercom_announce(core, &doc, &cmd);
        } else if (strcmp(cmd.op, "ring") == 0) {
            fleet_intercom_ring(core, &doc, &cmd);
        } else {
            (void)snprintf(detail, sizeof detail, "unknown op '%s'", cmd.op);
            reject(core, cmd.id, FLEET_ACK_UNKNOWN_OP, detail);
        }
    }
    fleet_json_free(&doc);
}

void fleet_cmd_confirm_pending(fleet_core_t *core)
{
    if (core->pending_cmd[0] == '\0') {
        return;
    }
    if (core->pending_error[0] != '\0') {
        fleet_cmd_answer(core, core->pending_cmd, false, FLEET_ACK_FAILED, core->pending_error,
                         true, NULL);
    } else if (core->pending_is_ota) {
        fleet_jw_t w;
        fleet_jw_init(&w, core->result, sizeof core->result);
        fleet_jw_obj_begin(&w);
        fleet_jw_key(&w, "fw");
        fleet_jw_str(&w, core->fw);
        fleet_jw_obj_end(&w);
        fleet_cmd_answer(core, core->pending_cmd, true, FLEET_ACK_OK, "", true,
                         fleet_jw_finish(&w) > 0 ? core->result : NULL);
    } else {
        fleet_cmd_answer(core, core->pending_cmd, true, FLEET_ACK_OK, "rebooted", true, NULL);
    }
    core->pending_cmd[0] = '\0';
    if (core->port->save_pending != NULL) {
        (void)core->port->save_pending(core->port->ctx, NULL);
    }
}
