#!/usr/bin/perl
#
# Bypass attempts: every way we know of to get an invalid batch past the
# gateway that Dify would still act on.  Production's two hops are rebuilt
# from real parts:
#
#   client -> the gateway (nginx + the module, location / { dify_status on;
#             proxy_pass http://dify_nginx; }: no URI part, so the client's
#             raw request-target goes on)
#          -> a stock nginx playing Dify's own (docker/nginx: location /v1 {
#             proxy_pass http://api:5001; include proxy.conf; }, defaults,
#             merge_slashes on, no dify_status)
#          -> the recording upstream playing gunicorn + Flask.
#
# Each attempt must end one of two ways:
#
#   - rejected: the gateway (the module with the contract's status and
#     code, or nginx itself for a malformed request) answered, and nothing
#     reached the recorder; or
#   - whatever reached the recorder does not reach Dify's handler: a model
#     of gunicorn + Werkzeug routing (below) finds no dispatch to
#     DocumentStatusApi.patch, or, when it does, the gateway checked and
#     passed that very request and its body is valid per the contract
#     (our own validator: UTF-8 without a BOM, JSON at most 64 levels
#     deep, no duplicate keys at any depth, an object, document_ids an
#     array of at most 1000 UUID strings).
#
# On top of that invariant each attempt states the outcome it should have,
# and a table of all attempts and what happened is printed at the end
# (prove -v).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest qw(uuid route ids_body build_request);
use JSON::PP ();
use Encode ();
use B ();
use IO::Compress::Gzip qw(gzip $GzipError);

DifyTest::require_module();

my $t = DifyTest->new;

$t->start_nginx(http => q{
    client_max_body_size 2m;

    upstream dify_nginx {
        server 127.0.0.1:%%PORT2%%;
    }

    # the gateway
    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%H2PORT%% http2;
        server_name gateway;

        location / {
            dify_status on;
            add_header X-Gateway $dify_status always;
            proxy_pass http://dify_nginx;
        }
    }

    # Dify's own nginx: docker/nginx/conf.d/default.conf.template and
    # proxy.conf.template, with the api service replaced by the recorder
    server {
        listen 127.0.0.1:%%PORT2%%;
        server_name _;
        client_max_body_size 100m;

        add_header X-Dify-Nginx 1 always;

        location /v1 {
            proxy_pass http://upstream;

            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }

        # the web front end and the rest: never the Flask service API
        location / {
            return 404;
        }
    }
});

my $KEY  = 'Bearer dataset-0123456789abcdefABCDEF';
my $DS   = uuid(1);
my @U    = map { uuid(100 + $_) } 0 .. 10;
my $GOOD = ids_body(@U[0 .. 2]);

# what an attacker wants Dify to act on: the gateway reads the first
# document_ids, Python keeps the last
my $EVIL = qq({"document_ids": ["$U[0]"], "document_ids": ["not-a-uuid", 5]});

my @JSON_HDRS = (Authorization => $KEY, 'Content-Type' => 'application/json');

my $P = route($DS, 'enable');                       # the canonical path
my $PFX = "/v1/datasets/$DS/documents/status";

my @TABLE;


# ---------------------------------------------------------------------------
# the model of Dify's side: gunicorn, then Werkzeug's router

my $UUID_RE = qr/[A-Fa-f0-9]{8}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{12}/;

# /v1 + @service_api_ns.route("/datasets/<uuid:dataset_id>/documents/status/<string:action>")
# string converter: [^/]+ (non-empty, no '/'); strict slashes: a trailing
# '/' on this leaf rule does not match
my $RULE = qr{\A/v1/datasets/($UUID_RE)/documents/status/([^/]+)\z}s;

sub werkzeug {
    my ($rec) = @_;
    my $target = $rec->{uri} // '';

    # gunicorn's split_request_uri(): urlsplit(), so an absolute-form
    # target keeps its path only; the fragment, then the query, go
    if ($target =~ m{\A[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*(.*)\z}s) {
        $target = $1;
    }
    $target =~ s/#.*\z//s;
    $target =~ s/\?.*\z//s;

    # PATH_INFO = unquote_to_wsgi_str(path): every %XX, %2F included,
    # once; no dot-segment resolution anywhere on Dify's side
    (my $path = $target) =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge;

    # MapAdapter.match(): path_part = "/" + path_info.lstrip("/")
    $path =~ s{\A/+}{};
    $path = "/$path";

    # Request.method is upper-cased; X-HTTP-Method-Override and ?_method
    # mean nothing to Flask
    my $method = uc($rec->{method} // '');

    if ($path =~ $RULE) {
        return { route => 'handler', dataset => $1, action => $2,
                 text => "DocumentStatusApi.patch, action \"$2\"" }
            if $method eq 'PATCH';
        return { route => 'none', text => "405 ($method)" };
    }

    # Map(merge_slashes=True): a path that matches once runs of '/' are
    # merged is answered with a 308 to the merged path, not dispatched
    (my $merged = $path) =~ s{/{2,}}{/}g;
    return { route => 'redirect', location => $merged,
             text => "308 to $merged" }
        if $merged =~ $RULE;

    return { route => 'none', text => '404' };
}


# ---------------------------------------------------------------------------
# the contract's rows 5-7, our own validator (undef: valid; else why not)

sub body_problem {
    my ($bytes) = @_;
    $bytes //= '';

    return 'larger than 1m' if length $bytes > 1048576;

    # Dify's orjson refuses a UTF-8 BOM (json.loads() would skip it)
    return 'a UTF-8 BOM' if $bytes =~ /\A\xEF\xBB\xBF/;

    my $text = eval {
        Encode::decode('UTF-8', $bytes, Encode::FB_CROAK | Encode::LEAVE_SRC)
    };
    return 'not UTF-8' unless defined $text;

    my $doc = do {
        local $SIG{__WARN__} = sub {};          # deep recursion
        eval { JSON::PP->new->max_depth(1_000_000)->decode($text) };
    };
    return "not JSON: " . ($@ =~ s/ at \S+ line \d+.*//sr) unless defined $doc;
    return 'not an object' unless ref $doc eq 'HASH';
    return 'nested deeper than 64 levels' if json_depth($doc) > 64;

    my $dup = duplicate_key($text);
    return "duplicate key \"$dup\"" if defined $dup;

    return 'no document_ids' unless exists $doc->{document_ids};
    my $ids = $doc->{document_ids};
    return 'document_ids is not an array' unless ref $ids eq 'ARRAY';
    return 'more than 1000 document_ids' if @$ids > 1000;
    for my $i (0 .. $#$ids) {
        my $v = $ids->[$i];
        return "document_ids[$i] is not a string" unless is_json_string($v);
        return "document_ids[$i] is not a UUID" unless $v =~ /\A$UUID_RE\z/;
    }
    return undef;
}

sub json_depth {
    my ($v) = @_;
    my $d = 0;
    for my $c (ref $v eq 'HASH' ? values %$v : ref $v eq 'ARRAY' ? @$v : ()) {
        my $cd = json_depth($c);
        $d = $cd if $cd > $d;
    }
    return (ref $v eq 'HASH' || ref $v eq 'ARRAY') ? $d + 1 : 0;
}

# JSON::PP decodes a JSON string to a plain PV, a number to an IV/NV,
# true/false to objects, null to undef
sub is_json_string {
    my ($v) = @_;
    return 0 if !defined $v || ref $v;
    my $f = B::svref_2object(\$v)->FLAGS;
    return ($f & B::SVp_POK()) && !($f & (B::SVp_IOK() | B::SVp_NOK()));
}

# keys compared after unescaping, per object, at every depth (the text is
# known to be valid JSON here)
sub duplicate_key {
    my ($text) = @_;
    my $str = JSON::PP->new->allow_nonref;
    my @stack;

    while ($text =~ /\G(?:[^"{}\[\],]+|("[^"\\]*(?:\\.[^"\\]*)*")|([{}\[\],]))/gcs) {
        if (defined $1) {
            my $f = $stack[-1];
            if ($f && $f->{obj} && $f->{want_key}) {
                my $k = $str->decode($1);
                return $k if $f->{keys}{$k}++;
                $f->{want_key} = 0;
            }
        } elsif (defined $2) {
            my $c = $2;
            if ($c eq '{') {
                push @stack, { obj => 1, keys => {}, want_key => 1 };
            } elsif ($c eq '[') {
                push @stack, { obj => 0 };
            } elsif ($c eq '}' || $c eq ']') {
                pop @stack;
            } elsif (@stack && $stack[-1]{obj}) {
                $stack[-1]{want_key} = 1;
            }
        }
    }
    return undef;
}


# ---------------------------------------------------------------------------
# running an attempt

sub hdr { my ($r, $n) = @_; return $r->{headers}{$n} // '' }

sub from_gateway {      # the gateway answered itself (Dify's nginx did not)
    my ($r) = @_;
    return hdr($r, 'x-dify-nginx') eq '';
}

sub describe {
    my ($res, $recs) = @_;
    my @d;
    for my $r (@$res) {
        my $s = $r->{status} // '-';
        if (from_gateway($r)) {
            if (hdr($r, 'x-gateway') eq 'rejected' && $r->{json}) {
                push @d, "gateway $s $r->{json}{code}";
            } else {
                push @d, "gateway (nginx) $s";
            }
        } elsif (hdr($r, 'x-gateway') eq 'passed') {
            push @d, "checked, passed, $s";
        } else {
            push @d, "not checked, forwarded, $s";
        }
    }
    for my $rec (@$recs) {
        my $w = werkzeug($rec);
        my $d = "Flask got $rec->{method} $rec->{uri}: $w->{text}";
        if ($w->{route} eq 'handler') {
            my $p = body_problem($rec->{body});
            $d .= defined $p ? ", body INVALID ($p): BYPASS" : ', body valid';
        }
        push @d, $d;
    }
    push @d, "Dify's nginx answered, Flask got nothing"
        if !@$recs && grep { !from_gateway($_) } @$res;
    return join '; ', @d;
}

# The invariant: every request that reaches Dify's handler was checked and
# passed by the gateway, and its body is valid.  A 308 from Werkzeug is
# followed back through the gateway, as a client would.
sub invariant_ok {
    my ($res, $recs, $depth) = @_;
    my $passed = grep { hdr($_, 'x-gateway') eq 'passed' } @$res;
    my $handled = 0;
    for my $rec (@$recs) {
        my $w = werkzeug($rec);
        my $what = "Flask: $rec->{method} $rec->{uri} -> $w->{text}";
        if ($w->{route} eq 'handler') {
            $handled++;
            my $p = body_problem($rec->{body});
            ok !defined $p, "$what: the body is valid per the contract"
                or diag "BYPASS: Dify's handler would get a body that is "
                      . "not valid: $p";
        } else {
            pass "$what: never reaches the handler";
            if ($w->{route} eq 'redirect' && !$depth) {
                # the client follows the 308: back through the gateway
                $t->upstream_clear;
                my $r = $t->http($rec->{method}, $w->{location},
                    headers => [ Authorization => $KEY,
                                 'Content-Type' => $rec->{hdr}{'content-type'}
                                                   // 'application/json' ],
                    body => $rec->{body});
                my @r2 = $t->upstream_requests;
                invariant_ok([ $r ], \@r2, 1);
            }
        }
    }
    ok $handled <= $passed,
        'whatever reaches the handler was checked and passed by the gateway'
        . " ($handled reach it, $passed passed)";
}

# expected outcomes:
#   [ reject => STATUS, CODE ]  the module answered (contract envelope)
#   [ nginx => STATUS ]         the gateway's nginx refused the request
#   'pass'                      checked, passed, Flask's handler gets the
#                               body byte for byte (give body => ...)
#   'no_route'                  not checked; forwarded, and Dify's nginx or
#                               Werkzeug routes it elsewhere
sub outcome_ok {
    my ($exp, $r, $recs, %o) = @_;
    if (ref $exp eq 'ARRAY' && $exp->[0] eq 'reject') {
        my (undef, $status, $code) = @$exp;
        is $r->{status}, $status, "the gateway answers $status";
        is hdr($r, 'content-type'), 'application/json', 'a JSON answer';
        is $r->{json} ? $r->{json}{code} : undef, $code, "code $code";
        like $r->{body}, qr/\A\{"status": $status, "code": "\Q$code\E", "message": "(?:[^"\\]|\\.)+"\}\z/,
            'the contract\'s envelope';
        ok from_gateway($r), 'answered by the gateway itself';
        is scalar @$recs, 0, 'nothing reached Flask';
    } elsif (ref $exp eq 'ARRAY' && $exp->[0] eq 'nginx') {
        is $r->{status}, $exp->[1], "the gateway's nginx answers $exp->[1]";
        ok from_gateway($r), 'answered by the gateway itself';
        is hdr($r, 'x-gateway'), '', 'the module did not see it';
        is scalar @$recs, 0, 'nothing reached Flask';
    } elsif ($exp eq 'pass') {
        is $r->{status}, 200, 'status 200 from Flask';
        is hdr($r, 'x-gateway'), 'passed', 'checked and passed by the gateway';
        is scalar @$recs, 1, 'Flask got exactly one request';
        my $w = $recs->[0] ? werkzeug($recs->[0]) : { route => '' };
        is $w->{route}, 'handler', 'routed to DocumentStatusApi.patch';
        ok defined $recs->[0] && $recs->[0]{body} eq $o{body},
            'the body byte for byte' if defined $o{body};
    } elsif ($exp eq 'no_route') {
        is hdr($r, 'x-gateway'), '', 'not the module\'s business';
        ok !from_gateway($r), 'forwarded to Dify\'s nginx';
        my @h = grep { werkzeug($_)->{route} eq 'handler' } @$recs;
        is scalar @h, 0, 'Werkzeug dispatches none of it to the handler';
    } else {
        die "bad expectation $exp";
    }
}

# attempt(NAME, EXPECT, CODE [, body => SENT]): CODE sends and returns one
# response
sub attempt {
    my ($name, $exp, $send, %o) = @_;
    $t->upstream_clear;
    my $r = $send->();
    my @recs = $t->upstream_requests;
    push @TABLE, [ $name, describe([ $r ], \@recs) ];
    subtest $name => sub {
        invariant_ok([ $r ], \@recs);
        outcome_ok($exp, $r, \@recs, %o);
    };
}

# a PATCH over HTTP/1.1 with the defaults; headers => [ ... ] replaces them
sub patch {
    my ($path, $body, %o) = @_;
    my $h = $o{headers} // [ @JSON_HDRS ];
    return $t->http($o{method} // 'PATCH', $path, headers => $h,
        body => $body, map { $_ => $o{$_} } grep { $_ ne 'headers'
            && $_ ne 'method' } keys %o);
}

sub h2patch {
    my ($path, $body, %o) = @_;
    my $h = $o{headers} // [ authorization => $KEY,
                             'content-type' => 'application/json' ];
    return $t->h2($o{method} // 'PATCH', $path, headers => $h, body => $body,
        no_length => $o{no_length}, frame => $o{frame});
}

my $BADJSON = [ reject => 400, 'bad_request' ];
my $BADACT  = [ reject => 400, 'invalid_action' ];


# ---------------------------------------------------------------------------
# the baseline: the canonical path, with a good and an evil body

attempt('canonical path, valid body', 'pass',
    sub { patch($P, $GOOD) }, body => $GOOD);
attempt('canonical path, duplicate document_ids (evil body)', $BADJSON,
    sub { patch($P, $EVIL) });


# ---------------------------------------------------------------------------
# path spellings, each with the evil body: checked (and rejected), or
# routed nowhere near the handler

my @paths = (
    # [ name, path, expectation ]
    [ 'double slash after /v1',             "/v1//datasets/$DS/documents/status/enable", $BADJSON ],
    [ 'double slash before the id',         "/v1/datasets//$DS/documents/status/enable", $BADJSON ],
    [ 'double slash before the action',     "$PFX//enable", $BADJSON ],
    [ 'leading double slash',               "/$P", $BADJSON ],
    [ 'many slashes everywhere',            "///v1///datasets///$DS///documents///status///enable", $BADJSON ],
    [ '/./ segment',                        "/v1/./datasets/$DS/documents/./status/enable", $BADJSON ],
    [ '/x/../ segment',                     "/v1/x/../datasets/$DS/documents/status/enable", $BADJSON ],
    [ '/v1/../v1/ segment',                 "/v1/../v1/datasets/$DS/documents/status/enable", $BADJSON ],
    [ 'action then /x/.. back',             "$PFX/enable/x/..", 'no_route' ],
    [ 'status/x/../enable',                 "$PFX/x/../enable", $BADJSON ],
    [ '%2e%2e segment',                     "/v1/x/%2e%2e/datasets/$DS/documents/status/enable", $BADJSON ],
    [ '%2E%2E segment (upper case)',        "/v1/x/%2E%2E/datasets/$DS/documents/status/enable", $BADJSON ],
    [ '.%2e segment',                       "/v1/x/.%2e/datasets/$DS/documents/status/enable", $BADJSON ],
    [ '%2e segment',                        "/v1/%2e/datasets/$DS/documents/status/enable", $BADJSON ],
    [ '%2F for every /',                    "/v1%2Fdatasets%2F$DS%2Fdocuments%2Fstatus%2Fenable", $BADJSON ],
    [ '%2f (lower case) before the action', "$PFX%2fenable", $BADJSON ],
    [ '%2F%2F before the id',               "/v1/datasets%2F%2F$DS/documents/status/enable", $BADJSON ],
    [ '%2F then %2e%2e',                    "/v1/x%2F%2e%2e%2Fdatasets/$DS/documents/status/enable", $BADJSON ],
    [ 'percent-encoded letters in datasets', "/v1/d%61tasets/$DS/documents/status/enable", $BADJSON ],
    [ 'percent-encoded documents and status', "/v1/datasets/$DS/docum%65nts/st%61tus/enable", $BADJSON ],
    [ 'en%61ble',                           "$PFX/en%61ble", $BADJSON ],
    [ 'upper-case hex %65%6E%61%62%6C%65',  "$PFX/%65%6E%61%62%6C%65", $BADJSON ],
    [ 'encoded v1 (%76%31)',                "/%76%31/datasets/$DS/documents/status/enable", $BADJSON ],
    [ 'encoded dash in the id',             route($DS =~ s/-/%2D/gr, 'enable'), $BADJSON ],
    [ 'query string',                       "$P?document_ids=x", $BADJSON ],
    [ 'empty query',                        "$P?", $BADJSON ],
    [ '_method=PATCH query on PATCH',       "$P?_method=PATCH", $BADJSON ],
    [ 'fragment',                           "$P#x", $BADJSON ],
    [ 'fragment hiding /..',                "$P#/..", $BADJSON ],
    [ 'fragment hiding /../../x',           "$P#/../../x", $BADJSON ],
    [ 'query then fragment',                "$P?a=1#b", $BADJSON ],
    [ '%23 (encoded #) then ..',            "$PFX/%23/../enable", $BADJSON ],
    [ '%3F (encoded ?) in the action',      "$PFX/enable%3Fx", $BADACT ],
    [ ';x path parameter on the action',    "$P;x", $BADACT ],
    [ ';x path parameter on status',        "/v1/datasets/$DS/documents/status;x/enable", 'no_route' ],
    [ ';x path parameter on the id',        "/v1/datasets/$DS;x/documents/status/enable", [ reject => 404, 'not_found' ] ],
    [ 'trailing slash',                     "$P/", 'no_route' ],
    [ 'trailing %2F',                       "$P%2F", 'no_route' ],
    [ 'trailing /.',                        "$P/.", 'no_route' ],
    [ 'trailing %20',                       "$P%20", $BADACT ],
    [ 'trailing .',                         "$P.", $BADACT ],
    [ 'trailing %00',                       "$P%00", [ nginx => 400 ] ],
    [ '%00 inside',                         "/v1/datasets/$DS/documents/status/en%00able", [ nginx => 400 ] ],
    [ 'bad escape %zz',                     "$PFX/%zzenable", [ nginx => 400 ] ],
    [ 'double-encoded %2565',               "$PFX/%2565nable", $BADACT ],
    [ 'double-encoded %252e%252e',          "$PFX/%252e%252e", $BADACT ],
    [ 'backslash for /',                    "/v1/datasets/$DS/documents/status\\enable", 'no_route' ],
    [ 'upper-case V1',                      "/V1/datasets/$DS/documents/status/enable", $BADJSON ],
    [ 'upper-case Datasets',                "/v1/Datasets/$DS/documents/status/enable", 'no_route' ],
    [ 'upper-case Status',                  "/v1/datasets/$DS/documents/Status/enable", 'no_route' ],
    [ 'upper-case Enable',                  "$PFX/Enable", $BADACT ],
    [ 'upper-case UUID',                    route(uc $DS, 'enable'), $BADJSON ],
    [ 'three dots as the action',           "$PFX/...", $BADACT ],
    [ '..; as the action',                  "$PFX/..;", $BADACT ],

    # The action segment is a dot segment: nginx resolves it away, so $uri
    # ends in /documents/ or /status/ and the module lets the request pass
    # untouched; both nginx forward the raw target, nothing on Dify's side
    # resolves dot segments, and Werkzeug's <string:action> takes "." or
    # "..": DocumentStatusApi.patch runs (dataset lookup, permission
    # check, request.get_json() of the unchecked body) before Dify turns
    # the action down, with no rate limit charged.  These are the only
    # paths Werkzeug dispatches that $uri does not match (every other
    # difference between the two views is a dot segment Werkzeug would
    # not route).  Expected: what the module answers once it also matches
    # the path as Flask sees it, 400 invalid_action.
    [ 'action ..',                          "$PFX/..", $BADACT ],
    [ 'action .',                           "$PFX/.", $BADACT ],
    [ 'action %2e%2e',                      "$PFX/%2e%2e", $BADACT ],
    [ 'action %2E',                         "$PFX/%2E", $BADACT ],
    [ 'action .%2e',                        "$PFX/.%2e", $BADACT ],
    [ 'action %2e.',                        "$PFX/%2e.", $BADACT ],
    [ 'action %2E%2E',                      "$PFX/%2E%2E", $BADACT ],
    [ 'action .. with a query',             "$PFX/..?x=1", $BADACT ],
    [ 'action .. with a fragment',          "$PFX/..#x", $BADACT ],
    [ 'action .. after a double slash',     "$PFX//..", $BADACT ],
);

for my $c (@paths) {
    my ($name, $path, $exp) = @$c;
    attempt("path: $name ($path)", $exp, sub { patch($path, $EVIL) });
}

# absolute-form request lines: nginx routes on the path, and so does
# gunicorn; only the path goes on
attempt('absolute-form request line', $BADJSON,
    sub { patch("http://localhost$P", $EVIL) });
attempt('absolute-form with upper-case scheme and host', $BADJSON,
    sub { patch("HTTP://LOCALHOST$P", $EVIL) });
attempt('absolute-form with a port and dot segments', $BADJSON,
    sub { patch("http://localhost:80/v1/x/../datasets/$DS/documents/status/enable", $EVIL) });
attempt('absolute-form with an encoded path', $BADJSON,
    sub { patch("http://localhost/v1/d%61tasets/$DS/documents/status/en%61ble", $EVIL) });
attempt('absolute-form, action ..', $BADACT,
    sub { patch("http://localhost$PFX/..", $EVIL) });


# ---------------------------------------------------------------------------
# methods

attempt('lower-case method patch', [ nginx => 400 ],
    sub { patch($P, $EVIL, method => 'patch') });
attempt('mixed-case method Patch', [ nginx => 400 ],
    sub { patch($P, $EVIL, method => 'Patch') });
for my $m (qw(POST PUT)) {
    for my $ovr ('X-HTTP-Method-Override', 'X-HTTP-Method', 'X-Method-Override') {
        attempt("$m with $ovr: PATCH", 'no_route',
            sub { patch($P, $EVIL, method => $m,
                        headers => [ @JSON_HDRS, $ovr => 'PATCH' ]) });
    }
    attempt("$m with ?_method=PATCH", 'no_route',
        sub { patch("$P?_method=PATCH", $EVIL, method => $m) });
}
attempt('HTTP/1.0 PATCH', $BADJSON,
    sub { patch($P, $EVIL, version => 'HTTP/1.0') });
attempt('HTTP/1.0 PATCH, no Content-Length, body follows', $BADJSON,
    sub { patch($P, $EVIL, version => 'HTTP/1.0', no_length => 1) });


# ---------------------------------------------------------------------------
# framing: chunked, Content-Length, Expect

attempt('chunked body', $BADJSON,
    sub { patch($P, $EVIL, chunked => [ 3, 10 ]) });
attempt('chunked body, valid', 'pass',
    sub { patch($P, $GOOD, chunked => [ 1, 7 ]) }, body => $GOOD);
attempt('chunked with chunk extensions', $BADJSON, sub {
    my $wire = join('', map { sprintf("%x;ext=\"v\";x\r\n%s\r\n", length, $_) }
                        unpack '(a16)*', $EVIL) . "0;last\r\n\r\n";
    patch($P, $wire, headers => [ @JSON_HDRS, 'Transfer-Encoding' => 'chunked' ],
          no_length => 1);
});
attempt('chunked with a trailer Content-Type: text/plain', $BADJSON, sub {
    my $wire = sprintf("%x\r\n%s\r\n", length $EVIL, $EVIL)
             . "0\r\nContent-Type: text/plain\r\n\r\n";
    patch($P, $wire, headers => [ @JSON_HDRS, 'Transfer-Encoding' => 'chunked' ],
          no_length => 1);
});
attempt('Transfer-Encoding: Chunked (case)', $BADJSON, sub {
    my $wire = sprintf("%x\r\n%s\r\n0\r\n\r\n", length $EVIL, $EVIL);
    patch($P, $wire, headers => [ @JSON_HDRS, 'Transfer-Encoding' => 'Chunked' ],
          no_length => 1);
});
attempt('Content-Length and chunked together', [ nginx => 400 ], sub {
    my $wire = sprintf("%x\r\n%s\r\n0\r\n\r\n", length $EVIL, $EVIL);
    patch($P, $wire, headers => [ @JSON_HDRS, 'Transfer-Encoding' => 'chunked',
                                  'Content-Length' => length $GOOD ]);
});
attempt('Transfer-Encoding: gzip, chunked', [ nginx => 501 ], sub {
    my $wire = sprintf("%x\r\n%s\r\n0\r\n\r\n", length $EVIL, $EVIL);
    patch($P, $wire, headers => [ @JSON_HDRS,
                                  'Transfer-Encoding' => 'gzip, chunked' ],
          no_length => 1);
});
attempt('two Transfer-Encoding: chunked headers', [ nginx => 400 ], sub {
    my $wire = sprintf("%x\r\n%s\r\n0\r\n\r\n", length $EVIL, $EVIL);
    patch($P, $wire, headers => [ @JSON_HDRS, 'Transfer-Encoding' => 'chunked',
                                  'Transfer-Encoding' => 'chunked' ],
          no_length => 1);
});
attempt('HTTP/1.0 with chunked', [ nginx => 400 ], sub {
    my $wire = sprintf("%x\r\n%s\r\n0\r\n\r\n", length $EVIL, $EVIL);
    patch($P, $wire, version => 'HTTP/1.0', no_length => 1,
          headers => [ @JSON_HDRS, 'Transfer-Encoding' => 'chunked' ]);
});
attempt('two equal Content-Length headers', [ nginx => 400 ], sub {
    patch($P, $EVIL, headers => [ @JSON_HDRS, 'Content-Length' => length $EVIL,
                                  'Content-Length' => length $EVIL ]);
});
attempt('Content-Length with a + sign', [ nginx => 400 ], sub {
    patch($P, $EVIL, headers => [ @JSON_HDRS,
                                  'Content-Length' => '+' . length $EVIL ]);
});
attempt('Expect: 100-continue, evil body', $BADJSON,
    sub { patch($P, $EVIL, expect => 1) });
attempt('Expect: 100-continue, valid body', 'pass',
    sub { patch($P, $GOOD, expect => 1) }, body => $GOOD);


# ---------------------------------------------------------------------------
# content types and encodings

sub ct { my ($path, $body, @h) = @_;
         return sub { patch($path, $body, headers => [ Authorization => $KEY, @h ]) } }

# gunicorn keeps the last Content-Type: two that differ get 415 here
attempt('Content-Type json then text/plain, evil body',
    [ reject => 415, 'unsupported_media_type' ],
    ct($P, $EVIL, 'Content-Type' => 'application/json',
                  'Content-Type' => 'text/plain'));
attempt('Content-Type json then text/plain, valid body (Dify would answer 415)',
    [ reject => 415, 'unsupported_media_type' ],
    ct($P, $GOOD, 'Content-Type' => 'application/json',
                  'Content-Type' => 'text/plain'));
attempt('Content-Type text/plain then json', [ reject => 415, 'unsupported_media_type' ],
    ct($P, $EVIL, 'Content-Type' => 'text/plain',
                  'Content-Type' => 'application/json'));
attempt('Content-Type: application/x+json', $BADJSON,
    ct($P, $EVIL, 'Content-Type' => 'application/x+json'));
attempt('Content-Type: application/json;charset=utf-16, UTF-16LE body', $BADJSON,
    ct($P, Encode::encode('UTF-16LE', $GOOD),
       'Content-Type' => 'application/json;charset=utf-16'));
attempt('Content-Type: application/json;charset=utf-16, UTF-8 body (charset ignored by Flask)',
    'pass', ct($P, $GOOD, 'Content-Type' => 'application/json;charset=utf-16'),
    body => $GOOD);
attempt('Content_Type: text/plain (underscore, dropped by nginx)', $BADJSON,
    ct($P, $EVIL, 'Content-Type' => 'application/json',
                  'Content_Type' => 'text/plain'));
attempt('Content-Type with obs-fold continuation', [ nginx => 400 ], sub {
    patch($P, $EVIL, headers => [ Authorization => $KEY,
        'Content-Type' => "application/json\r\n text/plain" ]);
});

my $gz;
gzip(\$EVIL => \$gz) or die $GzipError;
for my $ce ('gzip', 'GZIP', 'deflate', 'gzip, identity', 'identity, gzip') {
    attempt("Content-Encoding: $ce", [ reject => 415, 'unsupported_media_type' ],
        ct($P, $gz, @JSON_HDRS[2, 3], 'Content-Encoding' => $ce));
}
attempt('Content-Encoding: identity, evil body', $BADJSON,
    ct($P, $EVIL, @JSON_HDRS[2, 3], 'Content-Encoding' => 'identity'));
attempt('Content-Encoding: identity then gzip headers, gzip body',
    [ reject => 415, 'unsupported_media_type' ],
    ct($P, $gz, @JSON_HDRS[2, 3], 'Content-Encoding' => 'identity',
                                   'Content-Encoding' => 'gzip'));
attempt('Content-Encoding: gzip then identity headers', [ reject => 415, 'unsupported_media_type' ],
    ct($P, $gz, @JSON_HDRS[2, 3], 'Content-Encoding' => 'gzip',
                                   'Content-Encoding' => 'identity'));


# ---------------------------------------------------------------------------
# bodies: what Python's json.loads(bytes) reads differently

my $u0 = $U[0];
my @bodies = (
    [ 'duplicate document_ids, last bad',  qq({"document_ids":["$u0"],"document_ids":5}), $BADJSON ],
    [ 'duplicate document_ids, first bad', qq({"document_ids":5,"document_ids":["$u0"]}), $BADJSON ],
    [ 'duplicate key nested',              qq({"document_ids":["$u0"],"x":{"k":1,"k":2}}), $BADJSON ],
    [ 'duplicate key in an array of objects', qq({"document_ids":["$u0"],"x":[{},{"k":1,"k":2}]}), $BADJSON ],
    [ 'document\\u005fids duplicate',      qq({"document_ids":["$u0"],"document\\u005fids":["nope"]}), $BADJSON ],
    [ '\\u0064ocument_ids duplicate',      qq({"\\u0064ocument_ids":["nope"],"document_ids":["$u0"]}), $BADJSON ],
    [ 'duplicate spelled with a surrogate-free escape of every letter',
      '{"document_ids":["' . $u0 . '"],' . '"' . join('', map { sprintf '\\u%04x', ord } split //, 'document_ids') . '":1}', $BADJSON ],
    [ 'document_ids only escaped (no duplicate)',
      '{"document\\u005fids":["nope"]}', [ reject => 400, 'invalid_param' ] ],
    [ 'key with a BOM (distinct key)',     qq({"\xEF\xBB\xBFdocument_ids":5,"document_ids":["$u0"]}), 'pass' ],
    [ 'key with an escaped BOM only',      qq({"\\ufeffdocument_ids":["$u0"]}), [ reject => 400, 'invalid_param' ] ],
    # jansson refuses a NUL in a key (Python reads it as another key):
    # stricter than the contract's row 7, never a way past it
    [ 'key with \\u0000 suffix and the real key bad',
      qq({"document_ids\\u0000":["$u0"],"document_ids":5}), $BADJSON ],
    [ 'key with \\u0000 suffix only',      qq({"document_ids\\u0000":["$u0"]}), $BADJSON ],
    # orjson refuses a BOM: Dify would answer 400 after charging the key
    [ 'body with a UTF-8 BOM, valid',      qq(\xEF\xBB\xBF{"document_ids":["$u0"]}), $BADJSON ],
    [ 'body with a UTF-8 BOM, evil',       "\xEF\xBB\xBF$EVIL", $BADJSON ],
    [ 'body with two UTF-8 BOMs',          qq(\xEF\xBB\xBF\xEF\xBB\xBF{"document_ids":["$u0"]}), $BADJSON ],
    [ 'UTF-16LE body',                     Encode::encode('UTF-16LE', $EVIL), $BADJSON ],
    [ 'UTF-16BE body',                     Encode::encode('UTF-16BE', $EVIL), $BADJSON ],
    [ 'UTF-16 body with BOM',              Encode::encode('UTF-16', $EVIL), $BADJSON ],
    [ 'UTF-32LE body',                     Encode::encode('UTF-32LE', $EVIL), $BADJSON ],
    [ 'UTF-32 body with BOM',              Encode::encode('UTF-32', $EVIL), $BADJSON ],
    [ 'UTF-16LE of a valid document',      Encode::encode('UTF-16LE', $GOOD), $BADJSON ],
    [ 'NaN',                               qq({"document_ids":["$u0"],"x":NaN}), $BADJSON ],
    [ 'Infinity',                          qq({"document_ids":["$u0"],"x":-Infinity}), $BADJSON ],
    [ 'lone surrogate escape',             qq({"document_ids":["$u0"],"x":"\\ud800"}), $BADJSON ],
    [ 'UTF-8-encoded surrogate (Python: surrogatepass)', qq({"document_ids":["$u0"],"x":"\xed\xa0\x80"}), $BADJSON ],
    [ 'CESU-8 id',                         qq({"document_ids":["$u0\xed\xa0\x80"]}), $BADJSON ],
    [ 'id with a full-width digit',        '{"document_ids":["' . ("\xef\xbc\x91" . substr($u0, 1)) . '"]}', [ reject => 400, 'invalid_param' ] ],
    [ 'id as a number',                    '{"document_ids":[1e5]}', [ reject => 400, 'invalid_param' ] ],
    [ 'ids as an object',                  qq({"document_ids":{"0":"$u0"}}), [ reject => 400, 'invalid_param' ] ],
    [ 'huge integer (beyond 64 bits)',     qq({"document_ids":["$u0"],"x":123456789012345678901234567890}), 'pass' ],
    # jansson refuses a real that overflows a double; Python reads inf
    [ 'huge exponent 1e999',               qq({"document_ids":["$u0"],"x":1e999}), $BADJSON ],
    [ 'nesting 64 deep',                   qq({"document_ids":["$u0"],"x":) . ('[' x 63) . (']' x 63) . '}', 'pass' ],
    [ 'nesting 65 deep',                   qq({"document_ids":["$u0"],"x":) . ('[' x 64) . (']' x 64) . '}', $BADJSON ],
    [ 'nesting 100 deep',                  qq({"document_ids":["$u0"],"x":) . ('[' x 100) . (']' x 100) . '}', $BADJSON ],
    [ 'nesting 5000 deep',                 qq({"document_ids":["$u0"],"x":) . ('[' x 5000) . (']' x 5000) . '}', $BADJSON ],
    [ 'trailing NUL',                      qq({"document_ids":["$u0"]}\x00), $BADJSON ],
    [ 'NUL then garbage',                  qq({"document_ids":["$u0"]}\x00{"document_ids":5}), $BADJSON ],
    [ 'form feed as whitespace',           qq(\x0c{"document_ids":["$u0"]}), $BADJSON ],
    [ 'trailing comma',                    qq({"document_ids":["$u0"],}), $BADJSON ],
);

for my $c (@bodies) {
    my ($name, $body, $exp) = @$c;
    attempt("body: $name", $exp, sub { patch($P, $body) }, body => $body);
}

# a depth Dify's Python code fails on (a 500, before anything is done):
# past the gateway's cap of 64 levels, refused as bad_request
{
    my $body = qq({"document_ids":["$u0"],"x":) . ('[' x 1500) . (']' x 1500) . '}';
    attempt('body: nesting 1500 deep (Python: RecursionError, 500)', $BADJSON,
        sub { patch($P, $body) });
}


# ---------------------------------------------------------------------------
# HTTP/2: the same spellings in :path

my @h2paths = (
    [ 'canonical',                 $P, $BADJSON ],
    [ 'double slashes',            "/v1//datasets//$DS/documents/status//enable", $BADJSON ],
    [ '/./ and /x/../',            "/v1/./x/../datasets/$DS/documents/status/enable", $BADJSON ],
    [ '%2e%2e',                    "/v1/x/%2e%2e/datasets/$DS/documents/status/enable", $BADJSON ],
    [ '%2F',                       "/v1/datasets/$DS/documents%2Fstatus%2Fenable", $BADJSON ],
    [ 'en%61ble',                  "$PFX/en%61ble", $BADJSON ],
    [ 'fragment hiding /..',       "$P#/..", $BADJSON ],
    [ 'query',                     "$P?x=1", $BADJSON ],
    [ 'trailing slash',            "$P/", 'no_route' ],
    [ 'space in the path',         "$PFX/enable x", [ nginx => 400 ] ],
    [ 'absolute form in :path',    "http://localhost$P", [ nginx => 400 ] ],
    [ 'action ..',                 "$PFX/..", $BADACT ],
    [ 'action %2e',                "$PFX/%2e", $BADACT ],
);
for my $c (@h2paths) {
    my ($name, $path, $exp) = @$c;
    attempt("h2 :path $name ($path)", $exp, sub { h2patch($path, $EVIL) });
}
attempt('h2 valid', 'pass', sub { h2patch($P, $GOOD) }, body => $GOOD);
attempt('h2 evil body without content-length', $BADJSON,
    sub { h2patch($P, $EVIL, no_length => 1, frame => 7) });
attempt('h2 :method patch (lower case)', [ nginx => 400 ],
    sub { h2patch($P, $EVIL, method => 'patch') });
attempt('h2 POST with x-http-method-override: PATCH', 'no_route', sub {
    h2patch($P, $EVIL, method => 'POST',
            headers => [ authorization => $KEY, 'content-type' => 'application/json',
                         'x-http-method-override' => 'PATCH' ]);
});
attempt('h2 two content-type fields, json first',
        [ reject => 415, 'unsupported_media_type' ], sub {
    h2patch($P, $EVIL, headers => [ authorization => $KEY,
        'content-type' => 'application/json', 'content-type' => 'text/plain' ]);
});
attempt('h2 content-encoding: gzip', [ reject => 415, 'unsupported_media_type' ], sub {
    h2patch($P, $gz, headers => [ authorization => $KEY,
        'content-type' => 'application/json', 'content-encoding' => 'gzip' ]);
});


# ---------------------------------------------------------------------------
# several requests on one connection

sub pipeline {
    my ($name, $wire, @exp) = @_;
    $t->upstream_clear;
    my @res = DifyTest::parse_responses($t->raw($wire));
    my @recs = $t->upstream_requests;
    push @TABLE, [ $name, describe(\@res, \@recs) ];
    subtest $name => sub {
        invariant_ok(\@res, \@recs);
        is scalar @res, scalar @exp, scalar(@exp) . ' responses';
        my @left = @recs;
        for my $i (0 .. $#exp) {
            my $r = $res[$i] or next;
            my @mine = $exp[$i] eq 'pass' ? (shift @left) : ();
            subtest "response " . ($i + 1) => sub {
                outcome_ok($exp[$i], $r, [ grep { defined } @mine ],
                           body => $GOOD);
            };
        }
    };
}

{
    my ($h1, $b1) = build_request('PATCH', $P, headers => [ @JSON_HDRS ],
                                  body => $GOOD, keep_alive => 1);
    my ($h2, $b2) = build_request('PATCH', $P, headers => [ @JSON_HDRS ],
                                  body => $EVIL);
    my ($h2k, $b2k) = build_request('PATCH', $P, headers => [ @JSON_HDRS ],
                                    body => $EVIL, keep_alive => 1);
    my ($h1c, $b1c) = build_request('PATCH', $P, headers => [ @JSON_HDRS ],
                                    body => $GOOD);
    my ($h3, $b3) = build_request('PATCH', "$PFX/..", headers => [ @JSON_HDRS ],
                                  body => $EVIL);

    pipeline('pipelined: valid, then evil', $h1 . $b1 . $h2 . $b2,
             'pass', $BADJSON);
    pipeline('pipelined: evil, then valid', $h2k . $b2k . $h1c . $b1c,
             $BADJSON, 'pass');
    pipeline('pipelined: valid, then evil chunked', $h1 . $b1
             . join('', build_request('PATCH', $P, headers => [ @JSON_HDRS ],
                                      body => $EVIL, chunked => [ 5 ])),
             'pass', $BADJSON);
    pipeline('pipelined: valid, then action ..', $h1 . $b1 . $h3 . $b3,
             'pass', $BADACT);

    # a Content-Length that covers only the valid JSON: the rest is a
    # second request, and is checked as one
    my $smuggle = "PATCH $P HTTP/1.1\r\nHost: localhost\r\n"
        . "Authorization: $KEY\r\nContent-Type: application/json\r\n"
        . "Content-Length: " . length($GOOD) . "\r\n\r\n" . $GOOD
        . $h2 . $b2;
    pipeline('Content-Length shorter than the data: the rest is a request',
             $smuggle, 'pass', $BADJSON);
}


# ---------------------------------------------------------------------------

note '';
note 'attempt | outcome';
note '--- | ---';
note "$_->[0] | $_->[1]" for @TABLE;

$t->done;
done_testing;
