/*
 * cyphonic_plugin.h - the cyphonic plugin C ABI, version 1.0.
 *
 * A plugin is a shared library exporting CYPHONIC_PLUGIN_ENTRY_SYMBOL
 * ("cyphonic_plugin_entry_v1"), a function returning a pointer to a static
 * cyphonic_plugin_header that describes it and points at the function table
 * of its kind. docs/plugins.md is the prose contract (ownership, threading,
 * pre/post conditions of every function); this header is the binary one.
 * The Rust crate cyphonic-plugin-abi defines the same items, and its test
 * tests/c_header.rs checks every constant, size and offset below against it.
 *
 * Rules: only integers, these structs and (nullable) function pointers cross;
 * functions return CYPHONIC_STATUS_* codes (0 ok, negative failure); the caller
 * owns every buffer; later minor versions only append fields and functions.
 */
#ifndef CYPHONIC_PLUGIN_H
#define CYPHONIC_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- versioning ------------------------------------------------------- */

/* The bytes "CPYH" when read from memory on a little-endian machine. */
#define CYPHONIC_PLUGIN_MAGIC 0x48595043u
#define CYPHONIC_PLUGIN_ABI_MAJOR 1
#define CYPHONIC_PLUGIN_ABI_MINOR 0
/* The major version is part of the symbol name. */
#define CYPHONIC_PLUGIN_ENTRY_SYMBOL "cyphonic_plugin_entry_v1"

/* cyphonic_plugin_header.kind */
#define CYPHONIC_KIND_VIRTUAL_INTERFACE 1
#define CYPHONIC_KIND_CRYPTO_SUITE 2
#define CYPHONIC_KIND_MOBILITY_DETECTOR 3

/* ---- status codes ----------------------------------------------------- */

#define CYPHONIC_STATUS_OK 0
#define CYPHONIC_STATUS_PANIC (-1)
#define CYPHONIC_STATUS_INVALID_ARGUMENT (-2)
#define CYPHONIC_STATUS_BUFFER_TOO_SMALL (-3)
#define CYPHONIC_STATUS_AUTH_FAILED (-4)
#define CYPHONIC_STATUS_UNSUPPORTED (-5)
#define CYPHONIC_STATUS_IO (-6)
#define CYPHONIC_STATUS_TIMED_OUT (-7)
#define CYPHONIC_STATUS_CLOSED (-8)
#define CYPHONIC_STATUS_INTERNAL (-9)
#define CYPHONIC_STATUS_PERMISSION_DENIED (-10)
#define CYPHONIC_STATUS_NOT_FOUND (-11)

/* ---- other constants -------------------------------------------------- */

/* cyphonic_crypto_info.suite_id: the suite numbers of the handshake. */
#define CYPHONIC_SUITE_AES_256_GCM 1
#define CYPHONIC_SUITE_CHACHA20_POLY1305 2
#define CYPHONIC_SUITE_AES_256_CTR_HMAC_SHA256 3
/* Every suite of ABI 1 uses 12-byte nonces (cyphonic_crypto_op.nonce). */
#define CYPHONIC_NONCE_LEN 12

/* Bits of the hint cyphonic_mobility_vtable.wait returns. */
#define CYPHONIC_HINT_ADDRESSES_CHANGED 1
#define CYPHONIC_HINT_ROUTES_CHANGED 2

/* Bits of cyphonic_addr_entry.flags. */
#define CYPHONIC_ADDR_FLAG_TEMPORARY 1
#define CYPHONIC_ADDR_FLAG_DEPRECATED 2
#define CYPHONIC_ADDR_FLAG_TENTATIVE 4

/* cyphonic_route.family and cyphonic_addr_entry.family */
#define CYPHONIC_FAMILY_IPV4 4
#define CYPHONIC_FAMILY_IPV6 6

/* Size of cyphonic_vif_info.ifname, including the terminating NUL. */
#define CYPHONIC_VIF_IFNAME_LEN 64

/* A timeout_ms that never expires. */
#define CYPHONIC_TIMEOUT_INFINITE (-1)

/* ---- header ------------------------------------------------------------ */

/* Copies the UTF-8 message of the last failed call made on the calling thread
 * into buf[0 .. min(len, cap)] (no NUL) and returns its full length; 0 if
 * there is none. buf may be NULL when cap is 0. */
typedef size_t (*cyphonic_last_error_fn)(uint8_t *buf, size_t cap);

typedef struct cyphonic_plugin_header {
    uint32_t magic;       /* CYPHONIC_PLUGIN_MAGIC */
    uint16_t abi_major;   /* CYPHONIC_PLUGIN_ABI_MAJOR */
    uint16_t abi_minor;   /* CYPHONIC_PLUGIN_ABI_MINOR */
    uint32_t header_size; /* sizeof(cyphonic_plugin_header) */
    uint32_t kind;        /* CYPHONIC_KIND_* */
    const char *name;     /* static NUL-terminated UTF-8 */
    const char *version;  /* static NUL-terminated UTF-8 */
    const void *vtable;   /* the table of `kind` */
    uint32_t vtable_size; /* sizeof that table */
    uint32_t reserved;    /* 0 */
    cyphonic_last_error_fn last_error; /* nullable */
} cyphonic_plugin_header;

/* The entry point. The header and everything it points at stay valid and
 * unchanged for the life of the process (the host never unloads plugins). */
typedef const cyphonic_plugin_header *(*cyphonic_plugin_entry_fn)(void);
const cyphonic_plugin_header *cyphonic_plugin_entry_v1(void);

/* ---- kind 2: crypto suite --------------------------------------------- */

typedef struct cyphonic_crypto_info {
    uint32_t struct_size;
    uint32_t suite_id;  /* CYPHONIC_SUITE_* */
    uint32_t key_len;
    uint32_t nonce_len; /* CYPHONIC_NONCE_LEN */
    uint32_t tag_len;
    uint32_t reserved;
    uint64_t max_messages_per_key;
} cyphonic_crypto_info;

/* One seal or open. The plugin writes only len, status and buf's bytes.
 * Seal: buf[0..len] plaintext -> ciphertext || tag, len += tag_len
 *       (buf_cap must allow it, else BUFFER_TOO_SMALL).
 * Open: buf[0..len] ciphertext || tag -> plaintext, len -= tag_len
 *       (AUTH_FAILED on a bad tag). */
typedef struct cyphonic_crypto_op {
    uint8_t nonce[CYPHONIC_NONCE_LEN];
    uint32_t reserved;
    const uint8_t *aad;
    size_t aad_len;
    uint8_t *buf;
    size_t buf_cap;
    size_t len;
    int32_t status;
    uint32_t reserved2;
} cyphonic_crypto_op;

typedef struct cyphonic_crypto_vtable {
    uint32_t struct_size;
    uint32_t reserved;
    /* Caller sets out->struct_size to its buffer size; the plugin fills at most
     * that and sets struct_size to what it filled. */
    int32_t (*info)(cyphonic_crypto_info *out);
    /* *out receives an opaque key, released with key_free. */
    int32_t (*key_new)(const uint8_t *key, size_t key_len, void **out);
    void (*key_free)(void *key);
    /* 0: the batch was processed, each op has its own status; negative: the
     * whole call failed. Callable on one key from many threads at once. */
    int32_t (*seal_batch)(const void *key, cyphonic_crypto_op *ops, size_t count);
    int32_t (*open_batch)(const void *key, cyphonic_crypto_op *ops, size_t count);
} cyphonic_crypto_vtable;

/* ---- kind 1: virtual interface ---------------------------------------- */

typedef struct cyphonic_route {
    uint8_t family; /* CYPHONIC_FAMILY_* */
    uint8_t prefix_len;
    uint8_t reserved[2];
    uint8_t addr[16]; /* IPv4 in the first 4 bytes */
} cyphonic_route;

typedef struct cyphonic_vif_config {
    uint32_t struct_size;
    uint32_t mtu;
    const char *ifname; /* nullable: requested name */
    uint8_t has_ipv4;
    uint8_t ipv4_prefix_len;
    uint8_t has_ipv6;
    uint8_t ipv6_prefix_len;
    uint8_t ipv4[4];
    uint8_t ipv6[16];
    const cyphonic_route *routes;
    size_t route_count;
    const char *options; /* nullable: plugin-specific "key=value\n" lines */
} cyphonic_vif_config;

typedef struct cyphonic_vif_info {
    uint32_t struct_size;
    uint32_t mtu;
    uint32_t ifindex;
    uint32_t reserved;
    uint8_t ifname[CYPHONIC_VIF_IFNAME_LEN]; /* NUL-terminated */
} cyphonic_vif_info;

/* A packet slot over the caller's buffer buf[0..cap]: the packet is
 * buf[offset .. offset + len]; offset bytes of headroom precede it. The
 * plugin writes only len and packet bytes. */
typedef struct cyphonic_packet {
    uint8_t *buf;
    size_t cap;
    size_t offset;
    size_t len;
} cyphonic_packet;

typedef struct cyphonic_vif_vtable {
    uint32_t struct_size;
    uint32_t reserved;
    int32_t (*open)(const cyphonic_vif_config *cfg, void **out_handle);
    int32_t (*info)(void *h, cyphonic_vif_info *out);
    /* Fills up to count slots; *out_filled = leading slots filled (0 on
     * timeout or wake). timeout_ms: -1 forever, 0 do not block. */
    int32_t (*read_batch)(void *h, cyphonic_packet *pkts, size_t count,
                          int32_t timeout_ms, size_t *out_filled);
    int32_t (*write_batch)(void *h, const cyphonic_packet *pkts, size_t count,
                           size_t *out_written);
    /* UNSUPPORTED (or a NULL pointer) if there is no pollable descriptor. */
    int32_t (*pollable_fd)(void *h, int64_t *out_fd);
    int32_t (*wake)(void *h);
    void (*close)(void *h);
} cyphonic_vif_vtable;

/* ---- kind 3: mobility detector ---------------------------------------- */

typedef struct cyphonic_addr_entry {
    uint8_t family; /* CYPHONIC_FAMILY_* */
    uint8_t prefix_len;
    uint16_t flags; /* CYPHONIC_ADDR_FLAG_* */
    uint32_t ifindex;
    uint8_t addr[16]; /* IPv4 in the first 4 bytes */
} cyphonic_addr_entry;

typedef struct cyphonic_mobility_vtable {
    uint32_t struct_size;
    uint32_t reserved;
    int32_t (*open)(const char *options, void **out_handle);
    /* *out_hint = CYPHONIC_HINT_* bits, 0 on timeout or wake. */
    int32_t (*wait)(void *h, int32_t timeout_ms, uint32_t *out_hint);
    /* BUFFER_TOO_SMALL with *out_count = entries needed when cap is short. */
    int32_t (*snapshot)(void *h, cyphonic_addr_entry *out, size_t cap,
                        size_t *out_count);
    int32_t (*wake)(void *h);
    void (*close)(void *h);
} cyphonic_mobility_vtable;

#ifdef __cplusplus
}
#endif

#endif /* CYPHONIC_PLUGIN_H */
