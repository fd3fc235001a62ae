/* Redis Cluster hash slots: CRC16 (XMODEM) of the key, or of its hash tag,
 * modulo 16384.
 *
 * CRC16/XMODEM: polynomial 0x1021, initial value 0, no reflection, no final
 * xor; its check value (the CRC of "123456789") is 0x31C3.  Redis uses the
 * low 14 bits, so every slot is in 0..16383.
 *
 * Hash tags, as the Redis Cluster specification states them: if the key has a
 * '{', and a '}' somewhere after that first '{', and at least one byte between
 * the two, only the bytes between the first '{' and the first '}' after it are
 * hashed.  Otherwise the whole key is.  So "{}x" and "x{" hash whole, "a{b}c{d}"
 * hashes "b", and "}{x}" hashes "x".
 *
 * Header-only (static functions): include it where the slot is needed.  The
 * Python twin is quorumlock._cluster.key_slot; tests/test_clusters.py checks
 * both against CLUSTER KEYSLOT of a real server. */
#ifndef QL_CRC16_H
#define QL_CRC16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define QL_CLUSTER_SLOTS 16384

/* Byte-at-a-time table for polynomial 0x1021, filled on first use. */
static uint16_t ql_crc16_table[256];
static int ql_crc16_ready = 0;

static void ql_crc16_init(void) {
    for (int i = 0; i < 256; i++) {
        uint16_t crc = (uint16_t)(i << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
        ql_crc16_table[i] = crc;
    }
    /* Filling twice from two threads writes the same values: harmless. */
    ql_crc16_ready = 1;
}

static uint16_t ql_crc16(const unsigned char *buf, size_t len) {
    if (!ql_crc16_ready)
        ql_crc16_init();
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ ql_crc16_table[((crc >> 8) ^ buf[i]) & 0xff]);
    return crc;
}

/* The hash slot of key[0..len), hash tags honoured. */
static unsigned int ql_key_slot(const unsigned char *key, size_t len) {
    if (len == 0)
        return 0; /* CRC16 of nothing is 0; and memchr(NULL, ..., 0) is avoided */
    const unsigned char *open = (const unsigned char *)memchr(key, '{', len);
    if (open != NULL) {
        size_t start = (size_t)(open - key) + 1;
        const unsigned char *close =
            (const unsigned char *)memchr(key + start, '}', len - start);
        if (close != NULL) {
            size_t n = (size_t)(close - (key + start));
            if (n > 0)
                return ql_crc16(key + start, n) & (QL_CLUSTER_SLOTS - 1);
        }
    }
    return ql_crc16(key, len) & (QL_CLUSTER_SLOTS - 1);
}

#endif /* QL_CRC16_H */
