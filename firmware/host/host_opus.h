/*
 * host_opus.h - the media core's Opus ops on libopus (Debian libopus-dev).
 */
#ifndef HOST_OPUS_H
#define HOST_OPUS_H

#include "media_core.h"

/* Decoders and encoders for mono 20 ms frames; VoIP application, in-band FEC off. */
const mc_opus_ops_t *host_opus_ops(void);

#endif
