/*
 * fleet_msg_controller.h - the controller's side of the protocol: parsers of what a device
 * emits and encoders of what the controller sends it. Host tests and fuzzers only: the
 * device component neither builds nor exposes it. Types and rules: fleet_msg.h.
 */
#ifndef FLEET_MSG_CONTROLLER_H
#define FLEET_MSG_CONTROLLER_H

#include "fleet_msg.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- parsers: doc must hold a successfully parsed document --------------------------------- */

fleet_err_t fleet_status_parse(const fleet_json_doc_t *doc, fleet_status_t *out, fleet_perr_t *err);
fleet_err_t fleet_state_parse(const fleet_json_doc_t *doc, fleet_state_t *out, fleet_perr_t *err);
fleet_err_t fleet_ack_parse(const fleet_json_doc_t *doc, fleet_ack_t *out, fleet_perr_t *err);
fleet_err_t fleet_tele_parse(const fleet_json_doc_t *doc, fleet_tele_t *out, fleet_perr_t *err);
fleet_err_t fleet_meet_up_parse(const fleet_json_doc_t *doc, fleet_meet_up_t *out,
                                fleet_perr_t *err);

/* ---- encoders ---------------------------------------------------------------------------- */

size_t fleet_desired_encode(const fleet_desired_t *m, char *buf, size_t cap);
size_t fleet_cmd_encode(const fleet_cmd_t *m, char *buf, size_t cap); /* args as {} or copy */
size_t fleet_meet_down_encode(const fleet_meet_down_t *m, char *buf, size_t cap);

bool fleet_ack_code_from_name(const char *name, fleet_ack_code_t *out);

#ifdef __cplusplus
}
#endif

#endif /* FLEET_MSG_CONTROLLER_H */
