# Caddy with write_guard, built the way Caddy plugin images are: in Caddy's
# builder image, from xcaddy.json, then copied into the plain Caddy image.
#
#   docker build -t caddy-writeguard .
#   docker run -p 80:80 -v $PWD/Caddyfile:/etc/caddy/Caddyfile caddy-writeguard
#
# .ci/dockerfile-steps runs the builder stage's RUN steps without Docker.
ARG CADDY_VERSION=2.11.9

FROM caddy:${CADDY_VERSION}-builder AS builder
WORKDIR /src
COPY . .
ARG CADDY_OUT=/usr/bin/caddy
# xcaddy.json pins Caddy and the plugins; tools/ pins xcaddy itself.
RUN go -C tools run ./buildcaddy -config ../xcaddy.json -output "${CADDY_OUT}"
RUN "${CADDY_OUT}" list-modules | grep -x http.handlers.write_guard >/dev/null

FROM caddy:${CADDY_VERSION}
COPY --from=builder /usr/bin/caddy /usr/bin/caddy
