import {AbortError, ExitCode} from '../errors/index.js'

/**
 * An artifact reference: `[registry/]repository[:tag][@sha256:…]`.
 * The registry is the first path component when it holds a `.` or `:` or is
 * `localhost` (Docker's rule). With neither tag nor digest, the tag is `latest`.
 */
export interface Reference {
  registry?: string
  repository: string
  tag?: string
  digest?: string
}

const COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*'
const REPOSITORY_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`)
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/
const REGISTRY_RE = /^(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::[0-9]+)?|[A-Za-z0-9-]+:[0-9]+|\[[0-9a-fA-F:]+\](?::[0-9]+)?)$/
const DIGEST_RE = /^sha256:[a-f0-9]{64}$/

function bad(input: string, why: string, hint: string): AbortError {
  return new AbortError({
    code: 'BAD_REFERENCE',
    message: `invalid reference ${JSON.stringify(input)}: ${why}`,
    hint,
    exitCode: ExitCode.invalid,
    ref: input,
  })
}

export function parseReference(input: string): Reference {
  const s = input.trim()
  if (s === '') throw bad(input, 'it is empty', 'Name an artifact, e.g. example/busybox:1.0.')
  let rest = s
  let digest: string | undefined
  const at = rest.indexOf('@')
  if (at >= 0) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    if (!DIGEST_RE.test(digest)) {
      throw bad(input, `${JSON.stringify(digest)} is not a sha256 digest`, 'After @ write sha256: and 64 lowercase hex characters.')
    }
  }
  let registry: string | undefined
  const slash = rest.indexOf('/')
  if (slash > 0) {
    const first = rest.slice(0, slash)
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('[')) {
      if (!REGISTRY_RE.test(first)) throw bad(input, `registry ${JSON.stringify(first)} is not a host[:port]`, 'Write the registry as host or host:port.')
      registry = first
      rest = rest.slice(slash + 1)
    }
  }
  let tag: string | undefined
  const colon = rest.lastIndexOf(':')
  if (colon >= 0) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (!TAG_RE.test(tag)) {
      throw bad(input, `tag ${JSON.stringify(tag)} is not valid`, 'A tag is up to 128 letters, digits, _, . and -, not starting with . or -.')
    }
  }
  if (!REPOSITORY_RE.test(rest)) {
    throw bad(
      input,
      `repository ${JSON.stringify(rest)} is not valid`,
      'Use lowercase letters, digits and separators (. _ -), with / between path components, e.g. example/busybox.',
    )
  }
  if (rest.length > 255) throw bad(input, 'repository name is longer than 255 characters', 'Shorten the name.')
  if (tag === undefined && digest === undefined) tag = 'latest'
  return {registry, repository: rest, tag, digest}
}

/** `registry/repository` */
export function repositoryName(ref: Reference): string {
  return ref.registry ? `${ref.registry}/${ref.repository}` : ref.repository
}

/** The `org.opencontainers.image.ref.name` ovm stores for a tagged reference. */
export function refName(ref: Reference): string | undefined {
  return ref.tag === undefined ? undefined : `${repositoryName(ref)}:${ref.tag}`
}

export function formatReference(ref: Reference): string {
  return `${repositoryName(ref)}${ref.tag === undefined ? '' : `:${ref.tag}`}${ref.digest ? `@${ref.digest}` : ''}`
}
