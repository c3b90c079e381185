/*
 * host_opus.c - mc_opus_ops_t on libopus, for the host device and the unit tests.
 */
#include "host_opus.h"

#include <opus.h>
#include <stdlib.h>

static void *dec_new(void *ctx, uint32_t rate)
{
    (void)ctx;
    int err = 0;
    OpusDecoder *d = opus_decoder_create((opus_int32)rate, 1, &err);
    return err == OPUS_OK ? d : NULL;
}

static int decode(void *dec, const uint8_t *data, size_t len, int16_t *pcm, size_t max)
{
    /* data NULL: libopus conceals one frame of max samples (its PLC). */
    return opus_decode(dec, data, (opus_int32)len, pcm, (int)max, 0);
}

static void dec_free(void *dec)
{
    opus_decoder_destroy(dec);
}

static void *enc_new(void *ctx, uint32_t rate, uint32_t bitrate)
{
    (void)ctx;
    int err = 0;
    OpusEncoder *e = opus_encoder_create((opus_int32)rate, 1, OPUS_APPLICATION_VOIP, &err);
    if (err != OPUS_OK) {
        return NULL;
    }
    opus_encoder_ctl(e, OPUS_SET_BITRATE((opus_int32)bitrate));
    opus_encoder_ctl(e, OPUS_SET_COMPLEXITY(5)); /* what an ESP32-S3 can afford, roughly */
    return e;
}

static int encode(void *enc, const int16_t *pcm, size_t n, uint8_t *out, size_t cap)
{
    return opus_encode(enc, pcm, (int)n, out, (opus_int32)cap);
}

static void enc_free(void *enc)
{
    opus_encoder_destroy(enc);
}

static const mc_opus_ops_t ops = {
    .ctx = NULL,
    .dec_new = dec_new,
    .decode = decode,
    .dec_free = dec_free,
    .enc_new = enc_new,
    .encode = encode,
    .enc_free = enc_free,
};

const mc_opus_ops_t *host_opus_ops(void)
{
    return &ops;
}
