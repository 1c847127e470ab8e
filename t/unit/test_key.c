/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Unit tests of dify_key.c: SHA-256 and SHA-1 in lowercase hex.
 */


#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dify_key.h"


#define U(s)  (const unsigned char *) (s), sizeof(s) - 1

#define ABC56  "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"


typedef int (*hash_pt)(const unsigned char *data, size_t len, char *hex);


/*
 * Hashes into a buffer of exactly hex_len bytes (ASan sees a byte
 * written past it, so no NUL is written) and compares.
 */

static void
hash_is(hash_pt hash, size_t hex_len, const unsigned char *data, size_t len,
    const char *expect)
{
    char  *hex;

    assert_int_equal(strlen(expect), hex_len);

    hex = malloc(hex_len);
    assert_non_null(hex);

    assert_int_equal(hash(data, len, hex), 0);

    if (memcmp(hex, expect, hex_len) != 0) {
        fail_msg("got \"%.*s\", expected \"%s\"", (int) hex_len, hex, expect);
    }

    free(hex);
}


/* (data, len, expect); data and len may come from one U() */
#define SHA256_IS(...)  hash_is(dify_key_hash, DIFY_KEY_HASH_LEN, __VA_ARGS__)
#define SHA1_IS(...)    hash_is(dify_sha1_hex, DIFY_SHA1_HEX_LEN, __VA_ARGS__)


static void
test_sha256(void **state)
{
    unsigned char  *big;

    (void) state;

    /* FIPS 180-2 */
    SHA256_IS(U("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    SHA256_IS(U(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    SHA256_IS(NULL, 0,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    SHA256_IS(U(ABC56),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

    big = malloc(1000000);
    assert_non_null(big);
    memset(big, 'a', 1000000);
    SHA256_IS(big, 1000000,
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(big);

    /* a Dify dataset key; bytes that are not text */
    SHA256_IS(U("dataset-4YyDm2rQUBZJ0a3k5Kx2LgAa"),
        "5b649f50846ec57285020aab5faeaa4e97af93fbe19d835da389f69d33154d2b");
    SHA256_IS(U("\0\xff" "Bearer\0"),
        "82775bd635d694dba5791a069fb0c34328ca77485d077ad1cb0b77984faeda75");

    /* only len bytes */
    SHA256_IS((const unsigned char *) "abcdef", 3,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}


static void
test_sha1(void **state)
{
    unsigned char  *big;

    (void) state;

    /* FIPS 180-1 */
    SHA1_IS(U("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    SHA1_IS(U(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    SHA1_IS(NULL, 0, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    SHA1_IS(U(ABC56), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");

    big = malloc(1000000);
    assert_non_null(big);
    memset(big, 'a', 1000000);
    SHA1_IS(big, 1000000, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    free(big);

    /* what SCRIPT LOAD "return 1" answers */
    SHA1_IS(U("return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
}


static void
test_lowercase(void **state)
{
    size_t          i, j;
    char            hex[DIFY_KEY_HASH_LEN];
    unsigned char   data[64];

    (void) state;

    /* hex digits in lower case, every time */

    for (i = 0; i < sizeof(data); i++) {
        data[i] = (unsigned char) (i * 37);

        assert_int_equal(dify_key_hash(data, i + 1, hex), 0);

        for (j = 0; j < DIFY_KEY_HASH_LEN; j++) {
            assert_true((hex[j] >= '0' && hex[j] <= '9')
                        || (hex[j] >= 'a' && hex[j] <= 'f'));
        }

        assert_int_equal(dify_sha1_hex(data, i + 1, hex), 0);

        for (j = 0; j < DIFY_SHA1_HEX_LEN; j++) {
            assert_true((hex[j] >= '0' && hex[j] <= '9')
                        || (hex[j] >= 'a' && hex[j] <= 'f'));
        }
    }
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_sha1),
        cmocka_unit_test(test_lowercase),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
