/*
 * A crypto-suite plugin written in C against cyphonic_plugin.h: the XOR toy of
 * docs/plugins.md ("A minimal C plugin"). NOT cryptography. tests/loader.rs
 * builds it as a shared library and loads it through Plugin::load.
 */
#include "cyphonic_plugin.h"

#include <stdlib.h>
#include <string.h>

#define KEY_LEN 32
#define TAG_LEN 16

/* last_error: one message per thread. */
static _Thread_local char last_msg[128];
static _Thread_local size_t last_len;

static int32_t fail(int32_t status, const char *msg) {
    size_t n = strlen(msg);
    if (n > sizeof last_msg) n = sizeof last_msg;
    memcpy(last_msg, msg, n);
    last_len = n;
    return status;
}

static size_t last_error(uint8_t *buf, size_t cap) {
    size_t n = last_len < cap ? last_len : cap;
    if (n > 0 && buf != NULL) memcpy(buf, last_msg, n);
    return last_len;
}

struct key {
    uint8_t k[KEY_LEN];
};

static int32_t info(cyphonic_crypto_info *out) {
    if (out == NULL || out->struct_size < sizeof *out)
        return fail(CYPHONIC_STATUS_INVALID_ARGUMENT, "info: out too small");
    cyphonic_crypto_info i = {sizeof i, 0x7e57, KEY_LEN, CYPHONIC_NONCE_LEN, TAG_LEN, 0, 1u << 20};
    *out = i;
    return CYPHONIC_STATUS_OK;
}

static int32_t key_new(const uint8_t *key, size_t key_len, void **out) {
    if (out == NULL) return fail(CYPHONIC_STATUS_INVALID_ARGUMENT, "null out");
    *out = NULL;
    if (key == NULL || key_len != KEY_LEN)
        return fail(CYPHONIC_STATUS_INVALID_ARGUMENT, "key must be 32 bytes");
    struct key *k = malloc(sizeof *k);
    if (k == NULL) return fail(CYPHONIC_STATUS_INTERNAL, "out of memory");
    memcpy(k->k, key, KEY_LEN);
    *out = k;
    return CYPHONIC_STATUS_OK;
}

static void key_free(void *key) { free(key); }

static void xor_stream(const struct key *k, const uint8_t *nonce, uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] ^= k->k[i % KEY_LEN] ^ nonce[i % 12] ^ (uint8_t)i;
}

static void tag(const struct key *k, const uint8_t *aad, size_t aad_len, const uint8_t *ct,
                size_t n, uint8_t out[TAG_LEN]) {
    memset(out, 0, TAG_LEN);
    for (size_t i = 0; i < aad_len + n; i++) {
        uint8_t b = i < aad_len ? aad[i] : ct[i - aad_len];
        out[i % TAG_LEN] = (uint8_t)(out[i % TAG_LEN] * 31u + (b ^ k->k[i % KEY_LEN]));
    }
}

/* Per-op checks: a NULL buffer or a length past the capacity is the caller's bug. */
static int op_ok(const cyphonic_crypto_op *op) {
    return (op->buf != NULL || op->buf_cap == 0) && (op->aad != NULL || op->aad_len == 0) &&
           op->len <= op->buf_cap;
}

static int32_t seal_batch(const void *key, cyphonic_crypto_op *ops, size_t count) {
    if (key == NULL || (ops == NULL && count > 0))
        return fail(CYPHONIC_STATUS_INVALID_ARGUMENT, "null key or ops");
    for (size_t i = 0; i < count; i++) {
        cyphonic_crypto_op *op = &ops[i];
        if (!op_ok(op)) {
            op->status = fail(CYPHONIC_STATUS_INVALID_ARGUMENT, "bad op");
        } else if (op->buf_cap - op->len < TAG_LEN) {
            op->status = fail(CYPHONIC_STATUS_BUFFER_TOO_SMALL, "no room for the tag");
        } else {
            xor_stream(key, op->nonce, op->buf, op->len);
            tag(key, op->aad, op->aad_len, op->buf, op->len, op->buf + op->len);
            op->len += TAG_LEN;
            op->status = CYPHONIC_STATUS_OK;
        }
    }
    return CYPHONIC_STATUS_OK;
}

static int32_t open_batch(const void *key, cyphonic_crypto_op *ops, size_t count) {
    if (key == NULL || (ops == NULL && count > 0))
        return fail(CYPHONIC_STATUS_INVALID_ARGUMENT, "null key or ops");
    for (size_t i = 0; i < count; i++) {
        cyphonic_crypto_op *op = &ops[i];
        uint8_t expected[TAG_LEN];
        if (!op_ok(op)) {
            op->status = fail(CYPHONIC_STATUS_INVALID_ARGUMENT, "bad op");
            continue;
        }
        if (op->len < TAG_LEN) {
            op->status = fail(CYPHONIC_STATUS_AUTH_FAILED, "authentication failed");
            continue;
        }
        size_t n = op->len - TAG_LEN;
        tag(key, op->aad, op->aad_len, op->buf, n, expected);
        if (memcmp(expected, op->buf + n, TAG_LEN) != 0) {
            op->status = fail(CYPHONIC_STATUS_AUTH_FAILED, "authentication failed");
            continue;
        }
        xor_stream(key, op->nonce, op->buf, n);
        op->len = n;
        op->status = CYPHONIC_STATUS_OK;
    }
    return CYPHONIC_STATUS_OK;
}

static const cyphonic_crypto_vtable vtable = {
    sizeof(cyphonic_crypto_vtable), 0, info, key_new, key_free, seal_batch, open_batch,
};

static const cyphonic_plugin_header header = {
    CYPHONIC_PLUGIN_MAGIC,      CYPHONIC_PLUGIN_ABI_MAJOR, CYPHONIC_PLUGIN_ABI_MINOR,
    sizeof(cyphonic_plugin_header), CYPHONIC_KIND_CRYPTO_SUITE, "xor-c", "1.0.0",
    &vtable,                    sizeof vtable,             0,
    last_error,
};

const cyphonic_plugin_header *cyphonic_plugin_entry_v1(void) { return &header; }
