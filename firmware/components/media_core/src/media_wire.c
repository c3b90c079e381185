/*
 * media_wire.c - what the media core reads off the wire or writes onto it: RTP headers,
 * G.711 samples, and the audio line of an SDP.
 */
#include <string.h>

#include "media_core.h"

/* ---- RTP (RFC 3550 5.1) -------------------------------------------------------------------- */

bool mc_rtp_parse(const uint8_t *pkt, size_t len, mc_rtp_t *out)
{
    if (pkt == NULL || len < MC_RTP_HEADER || (pkt[0] >> 6) != 2) {
        return false;
    }
    uint8_t pt = pkt[1] & 0x7f;
    if (pt >= 72 && pt <= 76) {
        return false; /* RTCP sharing the port (RFC 5761 4): SR, RR, SDES, BYE, APP */
    }
    size_t off = MC_RTP_HEADER + 4u * (pkt[0] & 0x0f); /* CSRCs */
    if (pkt[0] & 0x10) {                              /* header extension */
        if (off + 4 > len) {
            return false;
        }
        off += 4 + 4u * (((size_t)pkt[off + 2] << 8) | pkt[off + 3]);
    }
    size_t end = len;
    if (pkt[0] & 0x20) { /* padding: the last byte counts it, itself included */
        size_t pad = pkt[len - 1];
        if (pad == 0 || pad > len) {
            return false;
        }
        end = len - pad;
    }
    if (off >= end) {
        return false; /* nothing left for a payload */
    }
    out->pt = pt;
    out->marker = (pkt[1] & 0x80) != 0;
    out->seq = (uint16_t)((pkt[2] << 8) | pkt[3]);
    out->ts = ((uint32_t)pkt[4] << 24) | ((uint32_t)pkt[5] << 16) | ((uint32_t)pkt[6] << 8) | pkt[7];
    out->ssrc =
        ((uint32_t)pkt[8] << 24) | ((uint32_t)pkt[9] << 16) | ((uint32_t)pkt[10] << 8) | pkt[11];
    out->payload = pkt + off;
    out->payload_len = end - off;
    return true;
}

size_t mc_rtp_write(const mc_rtp_t *h, uint8_t *out, size_t cap)
{
    size_t n = MC_RTP_HEADER + h->payload_len;
    if (n > cap) {
        return 0;
    }
    out[0] = 0x80;
    out[1] = (uint8_t)((h->marker ? 0x80 : 0) | (h->pt & 0x7f));
    out[2] = (uint8_t)(h->seq >> 8);
    out[3] = (uint8_t)h->seq;
    for (int i = 0; i < 4; i++) {
        out[4 + i] = (uint8_t)(h->ts >> (24 - 8 * i));
        out[8 + i] = (uint8_t)(h->ssrc >> (24 - 8 * i));
    }
    if (h->payload_len > 0) {
        memmove(out + MC_RTP_HEADER, h->payload, h->payload_len);
    }
    return n;
}

/* ---- G.711 (ITU-T G.711, the classic segment tables) --------------------------------------- */

uint8_t mc_ulaw_encode(int16_t pcm)
{
    int s = pcm;
    int sign = 0;
    if (s < 0) {
        s = -s;
        sign = 0x80;
    }
    if (s > 32635) {
        s = 32635;
    }
    s += 0x84;
    int exp = 7;
    for (int mask = 0x4000; (s & mask) == 0 && exp > 0; mask >>= 1) {
        exp--;
    }
    int mant = (s >> (exp + 3)) & 0x0f;
    return (uint8_t)~(sign | (exp << 4) | mant);
}

int16_t mc_ulaw_decode(uint8_t u)
{
    u = (uint8_t)~u;
    int t = (((u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    return (int16_t)((u & 0x80) ? (0x84 - t) : (t - 0x84));
}

uint8_t mc_alaw_encode(int16_t pcm)
{
    static const int16_t seg_end[8] = {0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF};
    int s = pcm >> 3; /* 13 bits */
    int mask = 0xD5;
    if (s < 0) {
        mask = 0x55;
        s = -s - 1;
    }
    int seg = 0;
    while (seg < 8 && s > seg_end[seg]) {
        seg++;
    }
    if (seg >= 8) {
        return (uint8_t)(0x7F ^ mask);
    }
    int aval = (seg << 4) | ((seg < 2 ? s >> 1 : s >> seg) & 0x0f);
    return (uint8_t)(aval ^ mask);
}

int16_t mc_alaw_decode(uint8_t a)
{
    a ^= 0x55;
    int t = (a & 0x0f) << 4;
    int seg = (a & 0x70) >> 4;
    if (seg == 0) {
        t += 8;
    } else {
        t = (t + 0x108) << (seg - 1);
    }
    return (int16_t)((a & 0x80) ? t : -t);
}

/* ---- SDP: the audio m-line ----------------------------------------------------------------- */

static bool ci_prefix(const char *s, size_t n, const char *word)
{
    size_t w = strlen(word);
    if (n < w) {
        return false;
    }
    for (size_t i = 0; i < w; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c - 'A' + 'a');
        }
        if (c != word[i]) {
            return false;
        }
    }
    return true;
}

/* Parses a decimal 0..limit at s[*i]; advances *i. */
static bool read_uint(const char *s, size_t n, size_t *i, unsigned limit, unsigned *out)
{
    unsigned v = 0;
    size_t start = *i;
    while (*i < n && s[*i] >= '0' && s[*i] <= '9') {
        v = v * 10u + (unsigned)(s[*i] - '0');
        if (v > limit) {
            return false;
        }
        (*i)++;
    }
    *out = v;
    return *i > start;
}

/* The codec an rtpmap line ("a=rtpmap:PT name/rate...") names for payload type pt. */
static mc_codec_t rtpmap_codec(const char *line, size_t n, unsigned pt)
{
    size_t i = 9; /* after "a=rtpmap:" */
    unsigned got;
    if (!read_uint(line, n, &i, 127, &got) || got != pt || i >= n || line[i] != ' ') {
        return MC_CODEC_NONE;
    }
    i++;
    if (ci_prefix(line + i, n - i, "opus/48000")) {
        return MC_CODEC_OPUS;
    }
    if (ci_prefix(line + i, n - i, "pcmu/8000")) {
        return MC_CODEC_PCMU;
    }
    if (ci_prefix(line + i, n - i, "pcma/8000")) {
        return MC_CODEC_PCMA;
    }
    return MC_CODEC_NONE;
}

/* Next line of sdp[*pos..len) without its CR/LF; false at the end. */
static bool next_line(const char *sdp, size_t len, size_t *pos, const char **line, size_t *n)
{
    if (*pos >= len) {
        return false;
    }
    size_t s = *pos, e = s;
    while (e < len && sdp[e] != '\n') {
        e++;
    }
    *pos = e < len ? e + 1 : len;
    if (e > s && sdp[e - 1] == '\r') {
        e--;
    }
    *line = sdp + s;
    *n = e - s;
    return true;
}

bool mc_sdp_audio(const char *sdp, size_t len, unsigned allowed, mc_codec_t *codec, uint8_t *pt)
{
    size_t pos = 0, section = 0, n = 0;
    const char *line = NULL;
    bool found = false;
    while (next_line(sdp, len, &pos, &line, &n)) {
        if (ci_prefix(line, n, "m=audio ")) {
            section = pos;
            found = true;
            break;
        }
    }
    if (!found) {
        return false;
    }
    /* m=audio <port> <proto> <fmt>... ; port 0 = the section was refused */
    size_t i = 8;
    unsigned port;
    if (!read_uint(line, n, &i, 65535, &port) || port == 0) {
        return false;
    }
    const char *mline = line;
    size_t mlen = n;
    while (i < mlen && mline[i] == ' ') {
        i++;
    }
    while (i < mlen && mline[i] != ' ') { /* the protocol */
        i++;
    }
    while (i < mlen) {
        while (i < mlen && mline[i] == ' ') {
            i++;
        }
        unsigned fmt;
        if (!read_uint(mline, mlen, &i, 127, &fmt)) {
            return false; /* RTP formats are payload types */
        }
        mc_codec_t c = fmt == 0 ? MC_CODEC_PCMU : fmt == 8 ? MC_CODEC_PCMA : MC_CODEC_NONE;
        size_t p = section;
        while (next_line(sdp, len, &p, &line, &n) && !ci_prefix(line, n, "m=")) {
            if (ci_prefix(line, n, "a=rtpmap:")) {
                mc_codec_t named = rtpmap_codec(line, n, fmt);
                if (named != MC_CODEC_NONE) {
                    c = named;
                    break;
                }
            }
        }
        if (c != MC_CODEC_NONE && (allowed & MC_ALLOW(c)) != 0) {
            *codec = c;
            *pt = (uint8_t)fmt;
            return true;
        }
    }
    return false;
}
