"""The renderer's shader: Lambert (diffuse) light per vertex, replacing pyrender's PBR mesh shader."""
import os
import re

# Lambert shading instead of pyrender's PBR shader: on Mesa's llvmpipe (software) the PBR fragment shader
# and a 4x4 inverse per vertex are most of the render time, and diffuse light is all a CLIP image needs.
# Light is computed per vertex: every mesh is drawn with flat face normals (3 vertices per face sharing
# its normal), so this is exactly per-face shading at a fraction of the cost. Same inputs, uniforms and
# #defines as pyrender's mesh.vert/mesh.frag, which these replace.
MESH_VERT = """#version 330 core
struct DirectionalLight { vec3 color; float intensity; vec3 direction; };
layout(location = 0) in vec3 position;
#ifdef NORMAL_LOC
layout(location = NORMAL_LOC) in vec3 normal;
#endif
#ifdef TEXCOORD_0_LOC
layout(location = TEXCOORD_0_LOC) in vec2 texcoord_0;
out vec2 uv_0;
#endif
#ifdef COLOR_0_LOC
layout(location = COLOR_0_LOC) in vec4 color_0;
#endif
layout(location = INST_M_LOC) in mat4 inst_m;
uniform mat4 M;
uniform mat4 V;
uniform mat4 P;
uniform DirectionalLight directional_lights[MAX_DIRECTIONAL_LIGHTS];
uniform int n_directional_lights;
uniform vec3 cam_pos;
uniform vec3 ambient_light;
out vec4 shade;  // light x vertex colour
void main() {
    mat4 model = M * inst_m;
    vec4 world = model * vec4(position, 1.0);
    gl_Position = P * V * world;
    vec3 to_cam = cam_pos - world.xyz;
    vec3 n = to_cam;
#ifdef NORMAL_LOC
    vec3 nm = mat3(model) * normal;  // model transforms are rotation + uniform scale here
    if (dot(nm, nm) > 0.0) n = nm;   // degenerate faces have no normal: light them head-on
#endif
    n = normalize(dot(n, to_cam) < 0.0 ? -n : n);  // two-sided: OBJ panels are often one-sided or flipped
    vec3 light = ambient_light;
    for (int i = 0; i < n_directional_lights; i++) {
        light += directional_lights[i].intensity * directional_lights[i].color
                 * max(dot(n, -directional_lights[i].direction), 0.0);
    }
    shade = vec4(light, 1.0);
#ifdef COLOR_0_LOC
    shade *= color_0;
#endif
#ifdef TEXCOORD_0_LOC
    uv_0 = texcoord_0;
#endif
}
"""
MESH_FRAG = """#version 330 core
struct Material {
    vec4 base_color_factor;
#ifdef HAS_BASE_COLOR_TEX
    sampler2D base_color_texture;
#endif
};
uniform Material material;
in vec4 shade;
#ifdef TEXCOORD_0_LOC
in vec2 uv_0;
#endif
out vec4 frag_color;
void main() {
    vec4 color = material.base_color_factor * shade;
#ifdef HAS_BASE_COLOR_TEX
    color *= texture(material.base_color_texture, uv_0);
#endif
    // Shading applied to sRGB colours directly: no gamma round trip (two pow per pixel) on llvmpipe.
    frag_color = clamp(color, 0.0, 1.0);
}
"""
SHADER_SOURCES = {"mesh.vert": MESH_VERT, "mesh.frag": MESH_FRAG}


def lambert_program_cache():
    """A pyrender ShaderProgramCache whose mesh programs compile our sources instead of pyrender's files.
    Call it only after pyrender is imported (meshes.render configures the GL platform first)."""
    from pyrender.shader_program import ShaderProgram, ShaderProgramCache

    class SourceProgram(ShaderProgram):
        def _load(self, shader_filename):
            text = SHADER_SOURCES.get(os.path.basename(shader_filename))
            if text is None:
                return super()._load(shader_filename)
            # pyrender's preprocessing: #ifdef X -> #if 1/0, then each define name -> its value
            text = re.sub(r"#ifdef\s+(\w+)\s*$", lambda m: "#if 1" if m.group(1) in self.defines else "#if 0",
                          text, flags=re.MULTILINE)
            for name, value in self.defines.items():
                text = text.replace(name, str(value))
            return text

    class LambertCache(ShaderProgramCache):
        def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
            program = super().get_program(vertex_shader, fragment_shader, geometry_shader, defines)
            if vertex_shader == "mesh.vert" and type(program) is ShaderProgram:
                program.__class__ = SourceProgram  # not compiled yet: compiling happens on first use
            return program

    return LambertCache()
