/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * libFuzzer harness of the request checks: dify_body_validate() (the
 * first byte picks the configuration, the rest is the body) checked
 * against a plain reference and, with its one-pass reading of the common
 * form, against itself without it, and dify_route_match(),
 * dify_parse_authorization(), dify_check_media() and
 * dify_json_envelope() on the whole input.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>

#include "dify_request.h"
#include "dify_body.h"


#define FUZZ_JSON_FLAGS                                                       \
    (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL)

#define FUZZ_MAX_PAIRS  256         /* quadratic duplicate search up to */

#define fuzz_assert(expr)                                                     \
    if (!(expr)) {                                                            \
        fprintf(stderr, "%s:%d: assertion \"%s\" failed\n",                   \
                __FILE__, __LINE__, #expr);                                   \
        abort();                                                              \
    }


typedef struct {
    size_t  off;
    size_t  len;
} fuzz_seg_t;


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_body(const uint8_t *data, size_t size);
static dify_body_rc_e fuzz_body_scan(json_t *v, size_t depth, size_t *values,
    size_t max);
static void fuzz_body_expect(json_t *root, const dify_body_conf_t *conf,
    char *expect);
static int fuzz_is_uuid(const char *p, size_t len);
static void fuzz_route(const uint8_t *data, size_t size);
static int fuzz_action_is_valid(const uint8_t *p, size_t len);
static void fuzz_auth(const uint8_t *data, size_t size);
static int fuzz_py_space(uint8_t c);
static void fuzz_media(const uint8_t *data, size_t size);
static int fuzz_coding_is_identity(const uint8_t *data, size_t size);
static int fuzz_strip_eq(const uint8_t *a, size_t alen, const uint8_t *b,
    size_t blen);
static int fuzz_media_is_json(const uint8_t *data, size_t size);
static void fuzz_envelope(const uint8_t *data, size_t size,
    const char *code);
static size_t fuzz_envelope_fits(size_t size, const char *code,
    const char *msg);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_body(data, size);
    fuzz_route(data, size);
    fuzz_auth(data, size);
    fuzz_media(data, size);
    fuzz_envelope(data, size, "bad_request");

    return 0;
}


/*
 * The first byte: bit 0 ids_any, bit 1 reject_duplicates, bits 2-7
 * max_documents (0: no cap).  The rest: the body.
 */

static void
fuzz_body(const uint8_t *data, size_t size)
{
    char                 expect[DIFY_BODY_MESSAGE_LEN];
    json_t              *root;
    size_t               i, len, max, values;
    uint8_t             *body;
    json_error_t         err;
    dify_body_rc_e       rc, scan;
    dify_body_conf_t     conf, slow_conf;
    dify_body_result_t   res, slow_res;

    if (size == 0) {
        return;
    }

    conf.ids_any = data[0] & 1;
    conf.reject_duplicates = (data[0] >> 1) & 1;
    conf.max_documents = data[0] >> 2;
    conf.no_fast = 0;

    /* a copy of its own, so that a read past the body is seen */

    len = size - 1;
    body = malloc(len ? len : 1);
    fuzz_assert(body != NULL);
    memcpy(body, data + 1, len);

    memset(&res, 'X', sizeof(res));

    rc = dify_body_validate(body, len, &conf, &res);

    fuzz_assert(memchr(res.message, '\0', sizeof(res.message)) != NULL);

    /* the common form's one pass, against the scan and jansson alone */

    slow_conf = conf;
    slow_conf.no_fast = 1;
    memset(&slow_res, 'Y', sizeof(slow_res));

    fuzz_assert(dify_body_validate(body, len, &slow_conf, &slow_res) == rc);
    fuzz_assert(strcmp(slow_res.message, res.message) == 0);
    fuzz_assert(slow_res.documents == res.documents);
    fuzz_assert(!slow_res.fast);

    if (rc != DIFY_BODY_OK) {
        fuzz_assert(res.documents == 0);
    }

    /*
     * The reference: the same parser, reading any value; the scan's
     * limits from the tree it builds; and row 7 the obvious way.
     */

    root = json_loadb((const char *) body, len,
                      FUZZ_JSON_FLAGS | JSON_DECODE_ANY, &err);

    max = conf.max_documents ? conf.max_documents + 2 + DIFY_BODY_EXTRA_VALUES
                             : SIZE_MAX;
    values = 0;

    if ((len >= 3 && body[0] == 0xef && body[1] == 0xbb && body[2] == 0xbf)
        || memchr(body, '\0', len) != NULL)
    {
        scan = DIFY_BODY_BAD_REQUEST;

    } else if (root != NULL) {
        scan = fuzz_body_scan(root, 0, &values, max);

        if (scan == DIFY_BODY_OK && !json_is_object(root)) {
            scan = DIFY_BODY_BAD_REQUEST;
        }

    } else {
        /* not JSON: BAD_REQUEST, or TOO_MANY_VALUES if counted first */
        scan = DIFY_BODY_NOMEM;
    }

    if (scan == DIFY_BODY_NOMEM) {
        fuzz_assert(rc == DIFY_BODY_BAD_REQUEST
                    || (rc == DIFY_BODY_TOO_MANY_VALUES
                        && conf.max_documents != 0));

    } else if (scan != DIFY_BODY_OK) {
        fuzz_assert(rc == scan);

    } else {
        fuzz_assert(rc == DIFY_BODY_OK || rc == DIFY_BODY_INVALID_PARAM);
    }

    switch (rc) {

    case DIFY_BODY_OK:
        fuzz_assert(res.message[0] == '\0');
        fuzz_assert(root != NULL && json_is_object(root));
        fuzz_body_expect(root, &conf, expect);
        fuzz_assert(expect[0] == '\0' || expect[0] == '?');
        fuzz_assert(res.documents
                    == json_array_size(json_object_get(root,
                                                       "document_ids")));
        fuzz_assert(conf.max_documents == 0
                    || res.documents <= conf.max_documents);
        break;

    case DIFY_BODY_BAD_REQUEST:
        fuzz_assert(root == NULL || !json_is_object(root)
                    || scan == DIFY_BODY_BAD_REQUEST);
        fuzz_assert(res.message[0] != '\0');

        for (i = 0; res.message[i] != '\0'; i++) {
            fuzz_assert(res.message[i] >= 0x20 && res.message[i] < 0x7f);
        }

        break;

    case DIFY_BODY_INVALID_PARAM:
        fuzz_assert(root != NULL && json_is_object(root));
        fuzz_body_expect(root, &conf, expect);

        if (expect[0] != '?') {
            fuzz_assert(strcmp(res.message, expect) == 0);

        } else {
            fuzz_assert(strstr(res.message, "] duplicates document_ids[")
                        != NULL);
        }

        fuzz_envelope((const uint8_t *) res.message, strlen(res.message),
                      "invalid_param");
        break;

    case DIFY_BODY_TOO_MANY_VALUES:
        fuzz_assert(conf.max_documents != 0);
        sprintf(expect, "Request body must not hold more than %zu JSON "
                "values.", max);
        fuzz_assert(strcmp(res.message, expect) == 0);
        fuzz_envelope((const uint8_t *) res.message, strlen(res.message),
                      "request_entity_too_large");
        break;

    default:
        /* no allocation fails here */
        fuzz_assert(0);
    }

    json_decref(root);
    free(body);
}


/*
 * What the scan should find in a body jansson reads, from its tree: the
 * values in document order (jansson keeps an object's keys in the order
 * read), the first that opens a level past the cap or goes over the
 * budget answers.
 */

static dify_body_rc_e
fuzz_body_scan(json_t *v, size_t depth, size_t *values, size_t max)
{
    size_t           i;
    json_t          *item;
    const char      *key;
    dify_body_rc_e   rc;

    if ((json_is_object(v) || json_is_array(v))
        && depth == DIFY_BODY_MAX_DEPTH)
    {
        return DIFY_BODY_BAD_REQUEST;
    }

    if (++*values > max) {
        return DIFY_BODY_TOO_MANY_VALUES;
    }

    if (json_is_object(v)) {
        json_object_foreach(v, key, item) {
            rc = fuzz_body_scan(item, depth + 1, values, max);
            if (rc != DIFY_BODY_OK) {
                return rc;
            }
        }
    }

    if (json_is_array(v)) {
        json_array_foreach(v, i, item) {
            rc = fuzz_body_scan(item, depth + 1, values, max);
            if (rc != DIFY_BODY_OK) {
                return rc;
            }
        }
    }

    return DIFY_BODY_OK;
}


/*
 * Row 7 in the plainest way: expect gets the message, "" when the body
 * passes, "?" when the ids are too many for the quadratic search and
 * there is no other error.
 */

static void
fuzz_body_expect(json_t *root, const dify_body_conf_t *conf, char *expect)
{
    size_t       i, j, n, ilen, jlen;
    json_t      *ids, *item;
    const char  *is, *js;

    expect[0] = '\0';

    ids = json_object_get(root, "document_ids");

    if (ids == NULL) {
        strcpy(expect, "document_ids is required.");
        return;
    }

    if (!json_is_array(ids)) {
        strcpy(expect, "document_ids must be an array of strings.");
        return;
    }

    n = json_array_size(ids);

    if (conf->max_documents != 0 && n > conf->max_documents) {
        sprintf(expect, "document_ids must not contain more than %zu items.",
                conf->max_documents);
        return;
    }

    for (i = 0; i < n; i++) {
        item = json_array_get(ids, i);

        if (!json_is_string(item)) {
            sprintf(expect, "document_ids[%zu] must be a string.", i);
            return;
        }

        if (!conf->ids_any
            && !fuzz_is_uuid(json_string_value(item),
                             json_string_length(item)))
        {
            sprintf(expect, "document_ids[%zu] is not a valid UUID.", i);
            return;
        }
    }

    if (!conf->reject_duplicates) {
        return;
    }

    if (n > FUZZ_MAX_PAIRS) {
        strcpy(expect, "?");
        return;
    }

    for (j = 1; j < n; j++) {
        js = json_string_value(json_array_get(ids, j));
        jlen = json_string_length(json_array_get(ids, j));

        for (i = 0; i < j; i++) {
            is = json_string_value(json_array_get(ids, i));
            ilen = json_string_length(json_array_get(ids, i));

            if (ilen != jlen) {
                continue;
            }

            if (conf->ids_any ? memcmp(is, js, ilen) == 0
                              : strncasecmp(is, js, ilen) == 0)
            {
                sprintf(expect, "document_ids[%zu] duplicates "
                        "document_ids[%zu].", j, i);
                return;
            }
        }
    }
}


static int
fuzz_is_uuid(const char *p, size_t len)
{
    size_t  i;

    if (len != 36) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (p[i] != '-') {
                return 0;
            }

        } else if (strchr("0123456789abcdefABCDEF", p[i]) == NULL
                   || p[i] == '\0')
        {
            return 0;
        }
    }

    return 1;
}


/*
 * The reference splits the whole URI into its non-empty segments,
 * front to back, and looks at the last five.
 */

static void
fuzz_route(const uint8_t *data, size_t size)
{
    int          m, expect;
    size_t       i, n;
    fuzz_seg_t  *seg, *s;
    dify_str_t   id, action;

    m = dify_route_match(data, size, &id, &action);

    seg = malloc((size / 2 + 1) * sizeof(fuzz_seg_t));
    fuzz_assert(seg != NULL);

    n = 0;

    for (i = 0; i < size; /* void */ ) {
        if (data[i] == '/') {
            i++;
            continue;
        }

        seg[n].off = i;

        while (i < size && data[i] != '/') {
            i++;
        }

        seg[n].len = i - seg[n].off;
        n++;
    }

    s = (n >= 5) ? &seg[n - 5] : NULL;

    expect = s != NULL && data[size - 1] != '/'
             && s[0].off > 0
             && s[0].len == 8 && memcmp(data + s[0].off, "datasets", 8) == 0
             && s[2].len == 9 && memcmp(data + s[2].off, "documents", 9) == 0
             && s[3].len == 6 && memcmp(data + s[3].off, "status", 6) == 0;

    fuzz_assert(m == expect);

    if (m) {
        fuzz_assert(id.data == data + s[1].off && id.len == s[1].len);
        fuzz_assert(action.data == data + s[4].off
                    && action.len == s[4].len);

        fuzz_assert(dify_is_uuid(id.data, id.len)
                    == fuzz_is_uuid((const char *) id.data, id.len));
        fuzz_assert(dify_action_is_valid(action.data, action.len)
                    == fuzz_action_is_valid(action.data, action.len));
    }

    fuzz_assert(dify_is_uuid(data, size)
                == fuzz_is_uuid((const char *) data, size));
    fuzz_assert(dify_action_is_valid(data, size)
                == fuzz_action_is_valid(data, size));

    free(seg);
}


static int
fuzz_action_is_valid(const uint8_t *p, size_t len)
{
    size_t              i;
    static const char  *actions[] = {
        "enable", "disable", "archive", "un_archive"
    };

    for (i = 0; i < sizeof(actions) / sizeof(actions[0]); i++) {
        if (len == strlen(actions[i]) && memcmp(p, actions[i], len) == 0) {
            return 1;
        }
    }

    return 0;
}


static void
fuzz_auth(const uint8_t *data, size_t size)
{
    dify_str_t      token;
    dify_auth_e     rc;
    const uint8_t  *p, *last;

    rc = dify_parse_authorization(size ? data : NULL, size, &token);

    /* gunicorn's value.strip(" \t") */

    p = data;
    last = data + size;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t')) {
        last--;
    }

    if (p == last || memchr(p, ' ', last - p) == NULL) {
        fuzz_assert(rc == DIFY_AUTH_MISSING);
    }

    if (rc != DIFY_AUTH_OK) {
        fuzz_assert(token.len == 0);
        return;
    }

    /* "bearer", a whitespace run, then the token up to the stripped end */

    while (p < last && fuzz_py_space(*p)) {
        p++;
    }

    fuzz_assert(last - p > 6 && strncasecmp((const char *) p, "bearer", 6)
                                == 0);
    p += 6;

    fuzz_assert(fuzz_py_space(*p));

    while (p < last && fuzz_py_space(*p)) {
        p++;
    }

    fuzz_assert(token.data == p && token.len == (size_t) (last - p));
    fuzz_assert(token.len > 0);
}


static int
fuzz_py_space(uint8_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20)
           || c == 0x85 || c == 0xa0;
}


static void
fuzz_media(const uint8_t *data, size_t size)
{
    size_t        half;
    dify_media_t  m;
    dify_media_e  rc;

    rc = dify_check_media(data, size, NULL, 0);
    fuzz_assert(rc == (fuzz_media_is_json(data, size) ? DIFY_MEDIA_OK
                                                      : DIFY_MEDIA_NOT_JSON));

    half = size / 2;

    rc = dify_check_media(data, half, data + half, size - half);

    if (!fuzz_media_is_json(data, half)) {
        fuzz_assert(rc == DIFY_MEDIA_NOT_JSON);

    } else {
        fuzz_assert(rc == (fuzz_coding_is_identity(data + half, size - half)
                           ? DIFY_MEDIA_OK : DIFY_MEDIA_ENCODED));
    }

    rc = dify_check_media(NULL, 0, data, size);
    fuzz_assert(rc == DIFY_MEDIA_MISSING);

    /* the input twice, then its halves: one Content-Type, then two */

    dify_media_init(&m);
    dify_media_type(&m, data, size);
    dify_media_type(&m, data, size);
    fuzz_assert(dify_media_verdict(&m)
                == (fuzz_media_is_json(data, size) ? DIFY_MEDIA_OK
                                                   : DIFY_MEDIA_NOT_JSON));

    dify_media_init(&m);
    dify_media_type(&m, data, half);
    dify_media_type(&m, data + half, size - half);
    rc = dify_media_verdict(&m);

    if (fuzz_strip_eq(data, half, data + half, size - half)) {
        fuzz_assert(rc == (fuzz_media_is_json(data, half)
                           ? DIFY_MEDIA_OK : DIFY_MEDIA_NOT_JSON));

    } else {
        fuzz_assert(rc == DIFY_MEDIA_CONFLICT);
    }
}


/* each element of the comma list, SP and HTAB stripped: "" or identity */

static int
fuzz_coding_is_identity(const uint8_t *data, size_t size)
{
    size_t          i, b, e;
    const uint8_t  *p;

    b = 0;

    for (i = 0; i <= size; i++) {
        if (i < size && data[i] != ',') {
            continue;
        }

        p = data + b;
        e = i - b;

        while (e > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            e--;
        }

        while (e > 0 && (p[e - 1] == ' ' || p[e - 1] == '\t')) {
            e--;
        }

        if (e != 0 && (e != 8 || strncasecmp((const char *) p, "identity", 8)
                                 != 0))
        {
            return 0;
        }

        b = i + 1;
    }

    return 1;
}


/* equal once gunicorn has stripped SP and HTAB from both ends */

static int
fuzz_strip_eq(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    while (alen > 0 && (*a == ' ' || *a == '\t')) {
        a++;
        alen--;
    }

    while (alen > 0 && (a[alen - 1] == ' ' || a[alen - 1] == '\t')) {
        alen--;
    }

    while (blen > 0 && (*b == ' ' || *b == '\t')) {
        b++;
        blen--;
    }

    while (blen > 0 && (b[blen - 1] == ' ' || b[blen - 1] == '\t')) {
        blen--;
    }

    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}


/* the reference: a lower-case copy of the stripped media type */

static int
fuzz_media_is_json(const uint8_t *data, size_t size)
{
    int             ok;
    char           *mt;
    size_t          i, n;
    const uint8_t  *p, *last;

    last = memchr(data, ';', size);
    last = last ? last : data + size;
    p = data;

    while (p < last && fuzz_py_space(*p)) {
        p++;
    }

    while (p < last && fuzz_py_space(last[-1])) {
        last--;
    }

    n = last - p;
    mt = malloc(n + 1);
    fuzz_assert(mt != NULL);

    for (i = 0; i < n; i++) {
        mt[i] = (p[i] >= 'A' && p[i] <= 'Z') ? p[i] + 32 : p[i];
    }

    mt[n] = '\0';

    ok = (n == 16 && memcmp(mt, "application/json", 16) == 0)
         || (n >= 17 && memcmp(mt, "application/", 12) == 0
             && memcmp(mt + n - 5, "+json", 5) == 0);

    free(mt);

    return ok;
}


/* the input as a message: the envelope is JSON that gives it back */

static void
fuzz_envelope(const uint8_t *data, size_t size, const char *code)
{
    char           *msg;
    json_t         *root;
    size_t          n, len;
    json_error_t    err;
    unsigned char  *buf;

    msg = malloc(size + 1);
    fuzz_assert(msg != NULL);
    memcpy(msg, data, size);
    msg[size] = '\0';

    len = strlen(msg);

    buf = malloc(6 * len + 64);
    fuzz_assert(buf != NULL);

    n = dify_json_envelope(buf, 6 * len + 64, 400, code, msg);
    fuzz_assert(n > 0);

    /* too small: by one byte, and cut somewhere, in buffers just so big */

    fuzz_assert(fuzz_envelope_fits(n - 1, code, msg) == 0);
    fuzz_assert(fuzz_envelope_fits(n * (size ? data[0] : 0) / 256, code, msg)
                == 0);
    fuzz_assert(fuzz_envelope_fits(n, code, msg) == n);

    root = json_loadb((const char *) buf, n, JSON_REJECT_DUPLICATES, &err);

    if (root == NULL) {
        /* only a message that is not UTF-8 makes it fail */
        fuzz_assert(json_error_code(&err) == json_error_invalid_utf8);

    } else {
        fuzz_assert(json_object_size(root) == 3);
        fuzz_assert(json_integer_value(json_object_get(root, "status"))
                    == 400);
        fuzz_assert(strcmp(json_string_value(json_object_get(root, "code")),
                           code) == 0);
        fuzz_assert(strcmp(json_string_value(json_object_get(root,
                                                             "message")),
                           msg) == 0);
        json_decref(root);
    }

    free(buf);
    free(msg);
}


static size_t
fuzz_envelope_fits(size_t size, const char *code, const char *msg)
{
    size_t          n;
    unsigned char  *buf;

    buf = malloc(size ? size : 1);
    fuzz_assert(buf != NULL);

    n = dify_json_envelope(buf, size, 400, code, msg);

    free(buf);

    return n;
}
